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
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from datagen.captioning import load_captioner
from datagen.composite import Placement, choose_placement, copy_paste, freeze
from datagen.config import BuildConfig
from datagen.decode import decode
from datagen.matting import load_matting
from datagen.publish import fetch_media, obtain, share, upload_media
from datagen.scheduling import StageName
from datagen.sources import SourceItem
from datagen.video_clip import VideoClip
from filters.alpha import alpha_quality
from filters.ssim import temporal_ssim
from manifests import video_io
from manifests.errors import LayerflowError, StageSetupError, one_line
from manifests.io import read_layers, resolve_media
from manifests.layers import CAPTIONED_LAYERS, InputKind, Layer, Role, SampleKind, Stage
from manifests.metrics import on_grey, recomposition_psnr
from manifests.schema import CLIP_COLUMNS, caption_column, media_uri

if TYPE_CHECKING:  # the runner contract, for type hints only
    from datagen.runner import StageSpec

Batch = dict[str, list]
OK, FAILED = "ok", "failed"


def set_up(specs: list[StageSpec]) -> list:
    """The stages of `specs`, constructed (their models loaded). A stage that cannot be set up is no row's fault: it
    raises `StageSetupError` (one line), which stops the build on every runner."""
    stages = []
    for spec in specs:
        try:
            stages.append(spec.cls(**spec.kwargs))
        except Exception as exc:
            raise setup_error(spec.name, exc) from exc
    return stages


def setup_error(stage: StageName, exc: Exception) -> StageSetupError:
    """The one-line error of a stage whose model could not be loaded (a worker's, or the driver's pre-check)."""
    what = one_line(exc) if isinstance(exc, LayerflowError) else f"{type(exc).__name__}: {one_line(exc)}"
    return StageSetupError(f"the {stage.value} stage could not be set up: {what}")


def to_batch(rows: list[dict]) -> Batch:
    return {"key": [row["key"] for row in rows], "row": [json.dumps(row) for row in rows]}


def from_batch(batch: Batch) -> list[dict]:
    return [json.loads(str(text)) for text in batch["row"]]


def sample_layers(out_dir: Path, remote: str | None, sample_id: str) -> dict[Layer, np.ndarray]:
    """A sample's layers as written; with `--out` on object storage, fetched first if this node lacks them."""
    if remote:
        fetch_media(out_dir, remote, sample_id)
    return read_layers(out_dir, sample_id)


class RowStage(ABC):
    """Runs `process(row)` on every row that has not failed yet, timing it and catching its errors."""

    stage: Stage

    @property
    def timing_key(self) -> str:
        """The key of this stage's seconds in `row["seconds"]` (and so in the summary)."""
        return self.stage.value

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
            row["seconds"][self.timing_key] = time.perf_counter() - start
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

    def __init__(self, config: BuildConfig, work_dir: str, remote: str | None = None) -> None:
        self.config = config
        self.work_dir = Path(work_dir)
        self.remote = remote  # `--out` on object storage: decoded clips pass to other nodes through it

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
            if self.remote:
                share(background_path, self.work_dir.parent, self.remote)
        if self.remote:
            share(clip_path, self.work_dir.parent, self.remote)
        height, width = decoded.clip.source_size
        row.update(kind=decoded.kind.value, clip_path=str(clip_path), frame_indices=decoded.clip.frame_indices,
                   source_frames=decoded.source_frames, source_height=height, source_width=width)


class MatteStage(RowStage):
    """Matte every input that can be a foreground; the alpha is stored in its clip file.

    A matting failure does not fail the input: it can still serve as a background. It is kept in
    `matte_error` and reported if the input ends up unused.
    """

    stage = Stage.MATTE

    def __init__(self, config: BuildConfig, work_dir: str | None = None, remote: str | None = None) -> None:
        self.backend = load_matting(config.matting, config.device)
        self.given = load_matting("given")
        self.work_dir = Path(work_dir) if work_dir else None
        self.remote = remote

    def process(self, row: dict) -> None:
        if not can_be_foreground(row):
            return
        clip = VideoClip.load(self._local(Path(row["clip_path"])))
        # Stills carry their own alpha; the chosen backend is for videos.
        backend = self.backend if InputKind(row["kind"]).is_video else self.given
        try:
            matte = backend(clip)
        except Exception as exc:
            row.update(matte_error=one_line(exc), matte_error_class=type(exc).__name__)
            return
        clip.alpha = np.clip(matte.alpha.astype(np.float32), 0.0, 1.0)
        clip.save(Path(row["clip_path"]))
        if self.remote:
            share(Path(row["clip_path"]), self.work_dir.parent, self.remote)
        info = matte.backend
        row.update(matting_backend=info.name, matting_model=info.model_id,
                   matting_weights_sha256=info.weights_sha256, matting_device=info.device)
        row.setdefault("devices", {})[StageName.MATTE.value] = info.device

    def _local(self, path: Path) -> Path:
        return obtain(path, self.work_dir.parent, self.remote) if self.remote else path


class ComposeStage(RowStage):
    """Build the four layers of a planned sample and write them as media files."""

    stage = Stage.COMPOSE

    def __init__(self, config: BuildConfig, out_dir: str, remote: str | None = None) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.remote = remote  # `--out` on object storage: the media are published from here

    def process(self, row: dict) -> None:
        fg, config = row["fg"], self.config
        rng = np.random.default_rng([config.seed, int(row["sample_id"][:12], 16)])
        fg_clip = VideoClip.load(self._local(Path(fg["clip_path"])))
        bg_clip = VideoClip.load(self._local(Path(row["bg_clip_path"])))
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
        if self.remote:
            upload_media(self.out_dir, self.remote, row["sample_id"])
        row.update(placement=placement.to_json(), frames_foreground=fg_clip.frame_indices,
                   frames_background=bg_indices, num_frames=config.frames, height=int(canvas[0]),
                   width=int(canvas[1]))

    def _local(self, path: Path) -> Path:
        return obtain(path, self.out_dir, self.remote) if self.remote else path


class CaptionStage(RowStage):
    """Per-layer captions from the configured captioner; a learned one sees the layers as written."""

    stage = Stage.CAPTION

    def __init__(self, config: BuildConfig, out_dir: str, remote: str | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.remote = remote
        self.captioner = load_captioner(config.captioner, config.device)

    def process(self, row: dict) -> None:
        # Decoding the four layer files back costs time: only captioners that look at pixels get them.
        layers = sample_layers(self.out_dir, self.remote, row["sample_id"]) if self.captioner.needs_pixels else None
        captions = self.captioner(row, layers)
        row["captioner"] = self.captioner.name
        device = getattr(self.captioner, "torch_device", None)  # learned captioners only
        if device is not None:
            row.setdefault("devices", {})[StageName.CAPTION.value] = device
        for layer, caption in captions.items():
            row[caption_column(layer)] = caption


class ScoreStage(RowStage):
    """Read the files back as written and compute the pixel scores: recomposition, alpha quality, SSIM."""

    stage = Stage.SCORE

    def __init__(self, config: BuildConfig, out_dir: str, remote: str | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.remote = remote

    def process(self, row: dict) -> None:
        layers = sample_layers(self.out_dir, self.remote, row["sample_id"])
        alpha = layers[Layer.ALPHA]
        row["recompose_psnr"] = recomposition_psnr(layers[Layer.FOREGROUND], alpha, layers[Layer.BACKGROUND],
                                                   layers[Layer.BLENDED])
        row.update(alpha_quality(alpha).columns())
        frames = {Layer.FOREGROUND: on_grey(layers[Layer.FOREGROUND], alpha),
                  Layer.BACKGROUND: layers[Layer.BACKGROUND], Layer.BLENDED: layers[Layer.BLENDED]}
        for layer, clip in frames.items():
            ssim = temporal_ssim(clip)
            row.update({f"ssim_{layer.value}_{stat}": value for stat, value in asdict(ssim).items()})


CLIP_OUTPUTS = (*CLIP_COLUMNS, "clip_embedding")


class ClipStage(RowStage):
    """CLIP scores and the blended-layer embedding; all null (with the reason) when no CLIP model could be had."""

    stage = Stage.SCORE

    def __init__(self, out_dir: str, clip_arch: str | None, clip_weights: str | None, clip_tag: str | None,
                 unavailable: str | None, device: str = "auto", remote: str | None = None) -> None:
        """`device`: auto | cpu | cuda, as the build's `--device` (cuda without a GPU is a `ConfigError`)."""
        self.out_dir = Path(out_dir)
        self.remote = remote
        self.unavailable = unavailable
        self.scorer = None
        if clip_arch is not None and clip_weights is not None:
            from filters.clip import ClipScorer  # torch + open_clip: only in a worker that scores with CLIP
            from manifests.device import resolve_device

            torch_device = resolve_device(device)  # outside the try: a missing GPU is an error, not null scores
            try:
                self.scorer = ClipScorer(clip_arch, clip_weights, device=torch_device, tag=clip_tag)
            except Exception as exc:  # a broken weights file must not fail every sample: scores become null
                self.unavailable = f"CLIP {clip_arch} did not load from {clip_weights}: {one_line(exc)}"

    @property
    def timing_key(self) -> str:
        return "score_clip"

    def process(self, row: dict) -> None:
        if self.scorer is None:
            row.setdefault("unscored", {}).update(dict.fromkeys(CLIP_OUTPUTS, self.unavailable))
            return
        from filters.clip import clip_scores

        captions = {layer.value: row.get(caption_column(layer)) for layer in CAPTIONED_LAYERS}
        try:
            layers = sample_layers(self.out_dir, self.remote, row["sample_id"])
            scores = clip_scores(self.scorer, layers[Layer.FOREGROUND], layers[Layer.ALPHA],
                                 layers[Layer.BACKGROUND], layers[Layer.BLENDED], captions)
        except Exception as exc:  # a score that cannot be computed is null with its reason, not a lost sample
            why = f"CLIP failed: {one_line(exc)}"
            row.setdefault("unscored", {}).update(dict.fromkeys(CLIP_OUTPUTS, why))
            return
        row.setdefault("devices", {})[StageName.CLIP.value] = self.scorer.device
        row.update(clip_text_foreground=scores.text_foreground, clip_text_background=scores.text_background,
                   clip_text_blended=scores.text_blended, clip_consistency_mean=scores.consistency_mean,
                   clip_consistency_min=scores.consistency_min, clip_embedding=scores.embedding,
                   clip_model=self.scorer.model_id)
        row.setdefault("unscored", {}).update(
            {f"clip_text_{layer}": "no caption for this layer" for layer, text in captions.items() if not text})
