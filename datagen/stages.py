"""The pipeline stages: small classes, set up once per worker, `__call__(batch) -> batch`.

A batch is `{"key": [...], "row": [json, ...]}`: rows travel as JSON metadata and frames travel as
files in the work folder, so the same stages run under Ray Data and under a plain Python loop.
A row that fails in a stage is marked failed (stage, error class, one-line message) and passed on
untouched by the stages after it: a bad input never stops the batch.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from datagen import video_io
from datagen.captioning import load_captioner
from datagen.clip import Clip
from datagen.composite import Placement, choose_placement, copy_paste, freeze
from datagen.config import BuildConfig
from datagen.decode import decode
from datagen.errors import one_line
from datagen.matting import load_matting
from datagen.sources import SourceItem
from filters.alpha import coverage
from filters.policy import Policy
from filters.recomposition import recomposition_psnr
from manifests.io import resolve_media
from manifests.layers import InputKind, Layer, Role, SampleKind, Stage
from manifests.schema import caption_column, media_uri

Batch = dict[str, list]
OK, FAILED = "ok", "failed"


def to_batch(rows: list[dict]) -> Batch:
    return {"key": [row["key"] for row in rows], "row": [json.dumps(row) for row in rows]}


def from_batch(batch: Batch) -> list[dict]:
    return [json.loads(str(text)) for text in batch["row"]]


class RowStage(ABC):
    """Runs `process(row)` on every row that has not failed yet, timing it and catching its errors."""

    stage: Stage

    def __call__(self, batch: Batch) -> Batch:
        rows = from_batch(batch)
        for row in rows:
            if row["status"] != OK:
                continue
            start = time.perf_counter()
            try:
                self.process(row)
            except Exception as exc:  # one bad input must never stop the build: it becomes a failure row
                row.update(status=FAILED, stage=self.stage.value, error_class=type(exc).__name__,
                           message=one_line(exc))
            row["seconds"][self.stage.value] = time.perf_counter() - start
        return to_batch(rows)

    @abstractmethod
    def process(self, row: dict) -> None:
        """Do this stage's work on one row, in place."""


def can_be_foreground(row: dict) -> bool:
    """Inputs that carry (or can be given) an alpha matte and are not reserved as backgrounds."""
    kind = InputKind(row["kind"])
    if row["pool"] == "backgrounds" or row["role"] == Role.BACKGROUND.value:
        return False
    return kind.is_video or kind in (InputKind.RGBA_IMAGE, InputKind.LAYERED_IMAGE)


class DecodeStage(RowStage):
    """Decode an input once into the work folder; the row gets its clip path and source facts."""

    stage = Stage.DECODE

    def __init__(self, config: BuildConfig, work_dir: str) -> None:
        self.config = config
        self.work_dir = Path(work_dir)

    def process(self, row: dict) -> None:
        fields = {k: row[k] for k in SourceItem.__dataclass_fields__}
        item = SourceItem(**{**fields, "kind": InputKind(row["kind"]), "role": Role(row["role"])})
        decoded = decode(item, self.config)
        clip_path = self.work_dir / f"{row['input_id']}.npz"
        decoded.clip.save(clip_path)
        if decoded.background is not None:
            background_path = self.work_dir / f"{row['input_id']}.bg.npz"
            decoded.background.save(background_path)
            row["background_path"] = str(background_path)
        height, width = decoded.clip.source_size
        row.update(kind=decoded.kind.value, clip_path=str(clip_path), frame_indices=decoded.clip.frame_indices,
                   source_frames=decoded.source_frames, source_height=height, source_width=width)


class MatteStage(RowStage):
    """Matte every input that can be a foreground; the alpha is stored in its clip file.

    A matting failure does not fail the input: it can still serve as a background. It is kept in
    `matte_error` and reported if the input ends up unused.
    """

    stage = Stage.MATTE

    def __init__(self, config: BuildConfig) -> None:
        self.backend = load_matting(config.matting)
        self.given = load_matting("given")

    def process(self, row: dict) -> None:
        if not can_be_foreground(row):
            return
        clip = Clip.load(Path(row["clip_path"]))
        # Stills carry their own alpha; the chosen backend is for videos.
        backend = self.backend if InputKind(row["kind"]).is_video else self.given
        try:
            matte = backend(clip)
        except Exception as exc:
            row["matte_error"] = one_line(exc)
            return
        clip.alpha = np.clip(matte.alpha.astype(np.float32), 0.0, 1.0)
        clip.save(Path(row["clip_path"]))
        info = matte.backend
        row.update(matting_backend=info.name, matting_model=info.model_id,
                   matting_weights_sha256=info.weights_sha256)


class ComposeStage(RowStage):
    """Build the four layers of a planned sample and write them as media files."""

    stage = Stage.COMPOSE

    def __init__(self, config: BuildConfig, out_dir: str) -> None:
        self.config = config
        self.out_dir = Path(out_dir)

    def process(self, row: dict) -> None:
        fg, config = row["fg"], self.config
        rng = np.random.default_rng([config.seed, int(row["sample_id"][:12], 16)])
        fg_clip = Clip.load(Path(fg["clip_path"]))
        bg_clip = Clip.load(Path(row["bg_clip_path"]))
        if fg_clip.alpha is None:
            raise ValueError("foreground clip has no alpha (matting did not run)")
        kind = SampleKind(row["kind"])
        canvas = bg_clip.frames.shape[1:3]
        aligned = InputKind(fg["kind"]) == InputKind.LAYERED_IMAGE
        placement = Placement() if aligned else choose_placement(fg_clip.alpha, canvas, rng, config.scale_range)
        bg_index = len(bg_clip.frames) // 2
        if kind == SampleKind.IMAGE_FROZEN:
            layers = freeze(fg_clip.frames[0], fg_clip.alpha[0], bg_clip.frames[bg_index], placement, config.frames)
            bg_indices = [bg_clip.frame_indices[bg_index]]
        else:
            background, bg_indices = bg_clip.frames, bg_clip.frame_indices
            if len(background) == 1:  # a still used as a static background
                background = np.repeat(background, config.frames, axis=0)
            layers = copy_paste(fg_clip.frames, fg_clip.alpha, background, placement)
        for layer in Layer:
            path = resolve_media(self.out_dir, media_uri(row["sample_id"], layer))
            if layer == Layer.ALPHA:
                video_io.write_alpha_video(path, layers.alpha, config.fps)
            else:
                video_io.write_rgb_video(path, layers.layer(layer), config.fps, config.crf)
        row.update(placement=placement.to_json(), frames_foreground=fg_clip.frame_indices,
                   frames_background=bg_indices, num_frames=config.frames, height=int(canvas[0]),
                   width=int(canvas[1]))


class CaptionStage(RowStage):
    """Per-layer captions from the configured captioner."""

    stage = Stage.CAPTION

    def __init__(self, config: BuildConfig) -> None:
        self.captioner = load_captioner(config.captioner)

    def process(self, row: dict) -> None:
        captions = self.captioner(row)
        row["captioner"] = self.captioner.name
        for layer, caption in captions.items():
            row[caption_column(layer)] = caption


class ScoreStage(RowStage):
    """Read the files back as written, score them, and apply the default policy."""

    stage = Stage.SCORE

    def __init__(self, config: BuildConfig, out_dir: str, policy: Policy | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.policy = policy or Policy()

    def process(self, row: dict) -> None:
        layers = read_layers(self.out_dir, row["sample_id"])
        cover = coverage(layers[Layer.ALPHA])
        row.update(
            recompose_psnr=recomposition_psnr(layers[Layer.FOREGROUND], layers[Layer.ALPHA],
                                              layers[Layer.BACKGROUND], layers[Layer.BLENDED]),
            alpha_coverage_mean=cover.mean, alpha_coverage_min=cover.min, alpha_coverage_max=cover.max,
        )
        row["reject_reasons"] = self.policy.reasons(row)
        row["keep"] = not row["reject_reasons"]


def read_layers(root: Path, sample_id: str) -> dict[Layer, np.ndarray]:
    """The four layers of a sample decoded from its files (alpha as (T, H, W) uint8)."""
    return {layer: video_io.read_layer(resolve_media(root, media_uri(sample_id, layer)), layer) for layer in Layer}
