"""Score a matting backend against DAVIS-layout ground truth: `<masks>/<video name>/<frame>.png`
(or `<masks>/<video name>/masks/<frame>.png`, the layout with `frames/` and `masks/` side by side); and, where the
truth has the clean background (`<masks>/<video name>/background/<frame>.png`, or one `background.png` for a static
camera) and the backend models one (bgsub's clean plate), the plate's PSNR inside and outside the object. With a
clean-plate method (`--clean-plate temporal`), the plate scored is that method's, made as a build makes it for a
`video_decomposed` sample (from the whole clip), with the share of the covered background it invented."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from datagen.cleanplate import load_clean_plate, make_plate
from datagen.config import BuildConfig
from datagen.decode import cover, decode, frame_files, load_mask
from datagen.matting import load_matting
from datagen.sources import IMAGE_EXTENSIONS, SourceItem, discover
from manifests.errors import ConfigError, InputError, one_line
from manifests.layers import InputKind
from manifests.metrics import FOREGROUND_THRESHOLD, alpha_iou, alpha_mae, masked_psnr

BACKGROUND = "background"  # the clean background beside the masks: a folder of frames, or one image


def evaluate_matting(videos: str, masks: str, backend_spec: str, config: BuildConfig,
                     clean_plate: str | None = None) -> dict:
    """Per-video and mean IoU (alpha > 0.5) and mean absolute alpha error, on the frames a build would use; the
    camera motion the backend measured; the clean plate's PSNR (dB) inside and outside the true object where both
    the truth and the backend (or `clean_plate`, a clean-plate spec) have a background; the means again per camera
    (`stabilised` or `static`)."""
    masks_root = Path(masks)
    if not masks_root.is_dir():
        raise ConfigError(f"--masks: {masks} is not a folder")
    backend = load_matting(backend_spec)
    plate_backend = load_clean_plate(clean_plate) if clean_plate else None
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
            item = replace(item, mask_dir=None)
            decoded = decode(item, config)
            stems = frame_stems(item, decoded.clip.frame_indices)
            truth = ground_truth(item, decoded.clip.frame_indices, gt_dir, config.size)
            matte = backend(decoded.clip)
            background = true_background(masks_root / item.name, stems, config.size)
        except (InputError, ValueError) as exc:
            errors[item.name] = one_line(exc)
            continue
        scores = {
            "iou": round(alpha_iou(matte.alpha, truth), 4),
            "mae": round(alpha_mae(matte.alpha, truth), 4),
            "frames": len(truth),
        }
        if matte.camera is not None:
            scores["camera"] = matte.camera
        plate = matte.background
        if plate_backend is not None:
            decoded.clip.alpha = matte.alpha
            try:
                made = make_plate(item, decoded.clip, decoded.source_frames, backend, config, plate_backend)
            except InputError as exc:  # no plate (the build makes no decomposed sample): said, the matte still scored
                plate, scores["plate_error"] = None, one_line(exc)
            else:
                plate = made.background
                scores.update({key: made.scores[key] for key in ("plate_invented_mean", "plate_invented_max")})
        if background is not None and plate is not None:
            inside = truth >= FOREGROUND_THRESHOLD
            scores["plate_psnr_inside"] = _psnr(background, plate, inside)
            scores["plate_psnr_outside"] = _psnr(background, plate, ~inside)
        per_video[item.name] = scores
    result = {
        "backend": backend_spec,
        "clean_plate": clean_plate or "the backend's own",
        "size": list(config.size),
        "frames": config.frames,
        "fps": config.fps,
        "videos": per_video,
        **_means(per_video.values()),
    }
    groups: dict[str, list[dict]] = {}
    for scores in per_video.values():
        if "camera" in scores:
            groups.setdefault("stabilised" if scores["camera"].get("stabilised") else "static", []).append(scores)
    if groups:
        result["by_camera"] = {camera: {**_means(group), "videos": len(group)}
                               for camera, group in sorted(groups.items())}
    if errors:
        result["errors"] = errors
    return result


def frame_stems(item: SourceItem, indices: list[int]) -> list[str]:
    """The ground-truth file stems of the chosen source frames: the frame files' own, else 00000, 00001, ..."""
    if item.kind == InputKind.FRAME_FOLDER:
        files = frame_files(Path(item.uri))
        return [files[i].stem for i in indices]
    return [f"{i:05d}" for i in indices]


def ground_truth(item: SourceItem, indices: list[int], gt_dir: Path, size: tuple[int, int]) -> np.ndarray:
    """GT alpha for the chosen source frames, resized and cropped exactly like the frames."""
    masks = {p.stem: p for p in gt_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}
    stems = frame_stems(item, indices)
    missing = [s for s in stems if s not in masks]
    if missing:
        raise InputError(f"ground truth has no mask for frame {missing[0]} in {gt_dir}")
    alpha = np.stack([load_mask(masks[s]) for s in stems])
    frames = np.zeros((*alpha.shape, 3), np.uint8)
    return cover(frames, alpha, size)[1]


def true_background(truth_dir: Path, stems: list[str], size: tuple[int, int]) -> np.ndarray | None:
    """(T, H, W, 3) uint8 clean background of the chosen frames, fitted like the frames; None where the truth has
    none (`background/<stem>.png` per frame, or one `background.png`)."""
    folder = truth_dir / BACKGROUND
    if folder.is_dir():
        files = {p.stem: p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}
        missing = [s for s in stems if s not in files]
        if missing:
            raise InputError(f"ground truth has no background for frame {missing[0]} in {folder}")
        paths = [files[s] for s in stems]
    else:
        still = next((p for p in truth_dir.glob(f"{BACKGROUND}.*") if p.suffix.lower() in IMAGE_EXTENSIONS), None)
        if still is None:
            return None
        paths = [still] * len(stems)
    frames = np.stack([_rgb(path) for path in dict.fromkeys(paths)])
    frames = cover(frames, None, size)[0]
    return frames if len(frames) == len(stems) else np.repeat(frames, len(stems), axis=0)


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _psnr(reference: np.ndarray, estimate: np.ndarray, where: np.ndarray) -> float | None:
    value = masked_psnr(reference, estimate, where)
    return None if value is None else round(value, 2)


def _means(videos) -> dict:
    videos = list(videos)
    out = {"mean_iou": _mean(v["iou"] for v in videos), "mean_mae": _mean(v["mae"] for v in videos)}
    for key in ("plate_psnr_inside", "plate_psnr_outside", "plate_invented_mean"):
        values = [v[key] for v in videos if v.get(key) is not None]
        if values:
            out[f"mean_{key}"] = _mean(values)
    return out


def _mean(values) -> float | None:
    values = list(values)
    return round(float(np.mean(values)), 4) if values else None
