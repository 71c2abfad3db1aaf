"""Score a matting backend against DAVIS-layout ground truth: `<masks>/<video name>/<frame>.png`
(or `<masks>/<video name>/masks/<frame>.png`, the layout with `frames/` and `masks/` side by side)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from datagen.config import BuildConfig
from datagen.decode import cover, decode, frame_files, load_mask
from datagen.matting import load_matting
from datagen.sources import IMAGE_EXTENSIONS, SourceItem, discover
from manifests.errors import ConfigError, InputError, one_line
from manifests.layers import InputKind
from manifests.metrics import alpha_iou, alpha_mae


def evaluate_matting(videos: str, masks: str, backend_spec: str, config: BuildConfig) -> dict:
    """Per-video and mean IoU (alpha > 0.5) and mean absolute alpha error, on the frames a build would use."""
    masks_root = Path(masks)
    if not masks_root.is_dir():
        raise ConfigError(f"--masks: {masks} is not a folder")
    backend = load_matting(backend_spec)
    clips = [item for item in discover(videos) if item.error is None and item.kind.is_video]
    if not clips:
        raise ConfigError(f"--videos: no videos or frame folders found in {videos!r}")
    per_video: dict[str, dict] = {}
    errors: dict[str, str] = {}
    for item in clips:
        gt_dir = masks_root / item.name
        if (gt_dir / "masks").is_dir():  # the SAM2 / shared layout: <name>/frames beside <name>/masks
            gt_dir = gt_dir / "masks"
        if not gt_dir.is_dir():
            errors[item.name] = f"no ground truth folder {gt_dir}"
            continue
        try:
            # The ground truth must not leak into the backend as a "given" mask.
            decoded = decode(replace(item, mask_dir=None), config)
            truth = ground_truth(item, decoded.clip.frame_indices, gt_dir, config.size)
            predicted = backend(decoded.clip).alpha
        except (InputError, ValueError) as exc:
            errors[item.name] = one_line(exc)
            continue
        per_video[item.name] = {
            "iou": round(alpha_iou(predicted, truth), 4),
            "mae": round(alpha_mae(predicted, truth), 4),
            "frames": len(truth),
        }
    result = {
        "backend": backend_spec,
        "size": list(config.size),
        "frames": config.frames,
        "fps": config.fps,
        "videos": per_video,
        "mean_iou": _mean(v["iou"] for v in per_video.values()),
        "mean_mae": _mean(v["mae"] for v in per_video.values()),
    }
    if errors:
        result["errors"] = errors
    return result


def ground_truth(item: SourceItem, indices: list[int], gt_dir: Path, size: tuple[int, int]) -> np.ndarray:
    """GT alpha for the chosen source frames, resized and cropped exactly like the frames."""
    masks = {p.stem: p for p in gt_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}
    if item.kind == InputKind.FRAME_FOLDER:
        files = frame_files(Path(item.uri))
        stems = [files[i].stem for i in indices]
    else:
        stems = [f"{i:05d}" for i in indices]
    missing = [s for s in stems if s not in masks]
    if missing:
        raise InputError(f"ground truth has no mask for frame {missing[0]} in {gt_dir}")
    alpha = np.stack([load_mask(masks[s]) for s in stems])
    frames = np.zeros((*alpha.shape, 3), np.uint8)
    return cover(frames, alpha, size)[1]


def _mean(values) -> float | None:
    values = list(values)
    return round(float(np.mean(values)), 4) if values else None
