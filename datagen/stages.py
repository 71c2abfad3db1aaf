"""The pipeline stages: small classes, set up once per worker, `__call__(batch) -> batch`.

A batch holds typed rows (`datagen.rows`) as JSON; frames travel as files in the work folder, so the same stages run
under Ray Data and under a plain Python loop. Each stage says which row fields it reads and writes. A row that fails
in a stage is marked failed (stage, error class, one-line message) and passed on untouched by the stages after it:
a bad input never stops the batch.
"""

from __future__ import annotations

import os
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Generic

import numpy as np

from datagen.captioning import load_captioner
from datagen.cleanplate import load_clean_plate, make_plate
from datagen.composite import Placement, choose_placement, copy_paste, decompose, freeze, freeze_layers
from datagen.config import BuildConfig
from datagen.decode import decode
from datagen.matting import MattingBackend, load_matting
from datagen.publish import fetch_media, obtain, share, upload_media
from datagen.rows import Batch, Failure, InputRow, R, SampleRow, from_batch, to_batch
from datagen.scheduling import StageName
from datagen.video_clip import VideoClip
from filters.alpha import alpha_quality
from filters.ssim import RememberedSSIM
from manifests import video_io
from manifests.errors import LayerflowError, StageSetupError, one_line
from manifests.io import read_layers, resolve_media
from manifests.layers import CAPTIONED_LAYERS, InputKind, Layer, Role, SampleKind, Stage
from manifests.metrics import on_grey, psnr, recomposition_psnr
from manifests.schema import (
    CLIP_COLUMNS,
    CLIP_EMBEDDING,
    PLATE_SCORES,
    RECOMPOSE_PSNR,
    layer_media_uri,
    media_uri,
    plate_invented_uri,
)
from manifests.video_io import EncodeCache, quantise

if TYPE_CHECKING:  # the runner contract, for type hints only
    from datagen.runner import StageSpec


def set_up(specs: list[StageSpec], threads: int | None = None) -> list:
    """The stages of `specs`, constructed (their models loaded), in a process whose numeric libraries use `threads`
    threads each (`limit_threads`). A stage that cannot be set up is no row's fault: it raises `StageSetupError`
    (one line), which stops the build on every runner."""
    limit_threads(threads)
    stages = []
    for spec in specs:
        try:
            stages.append(spec.cls(**spec.kwargs))
        except Exception as exc:
            raise setup_error(spec.name, exc) from exc
    return stages


def limit_threads(count: int | None) -> None:
    """Cap the intra-op threads of torch and OpenCV in this process at `count` (None: their defaults, one per core).

    A stage copy uses the CPUs it holds: a Ray task that holds one CPU but lets OpenCV and torch start a thread per
    core oversubscribes the machine as soon as two tasks run. The codecs are single-threaded already (x264 for
    identical bytes, decord by choice), so this is every pool a stage runs on.
    """
    if count is None:
        return
    import cv2

    cv2.setNumThreads(count)
    # torch only where a stage has imported it: importing it here cost every Ray worker 1.3 s of start-up in a build
    # whose stages never touch it. One imported later starts its OpenMP pool at OMP_NUM_THREADS.
    os.environ["OMP_NUM_THREADS"] = str(count)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != count:
        torch.set_num_threads(count)


def setup_error(stage: StageName, exc: Exception) -> StageSetupError:
    """The one-line error of a stage whose model could not be loaded (a worker's, or the driver's pre-check)."""
    what = one_line(exc) if isinstance(exc, LayerflowError) else f"{type(exc).__name__}: {one_line(exc)}"
    return StageSetupError(f"the {stage.value} stage could not be set up: {what}")


def sample_layers(out_dir: Path, remote: str | None, sample_id: str) -> dict[Layer, np.ndarray]:
    """A sample's layers as written; with `--out` on object storage, fetched first if this node lacks them."""
    if remote:
        fetch_media(out_dir, remote, sample_id)
    return read_layers(out_dir, sample_id)


class RowStage(ABC, Generic[R]):
    """Runs `process(row)` on every row that has not failed yet, timing it and catching its errors.

    `reads` / `writes`: the row fields the stage reads and the ones it sets (besides `status`, `failure`, `seconds`
    and `devices`, which every stage may touch).
    """

    stage: ClassVar[Stage]
    row_type: ClassVar[type]
    reads: ClassVar[tuple[str, ...]]
    writes: ClassVar[tuple[str, ...]]

    @property
    def timing_key(self) -> str:
        """The key of this stage's seconds in `row.seconds` (and so in the summary)."""
        return self.stage.value

    def __call__(self, batch: Batch) -> Batch:
        rows = from_batch(batch, self.row_type)
        for row in rows:
            if not row.ok:
                continue
            start = time.perf_counter()
            try:
                self.process(row)
            except Exception as exc:  # one bad input must never stop the build: it becomes a failure row
                row.fail(Failure.of(self.stage, exc))
            row.seconds[self.timing_key] = time.perf_counter() - start
        return to_batch(rows)

    @abstractmethod
    def process(self, row: R) -> None:
        """Do this stage's work on one row, in place."""


def can_be_foreground(row: InputRow) -> bool:
    """Inputs that carry (or can be given) an alpha matte and are not reserved as backgrounds."""
    if row.item.pool == "backgrounds" or row.item.role is Role.BACKGROUND:
        return False
    return row.kind.is_video or row.kind in (InputKind.RGBA_IMAGE, InputKind.LAYERED_IMAGE)


def can_be_decomposed(row: InputRow) -> bool:
    """A matted real video (not one with an alpha channel of its own: nothing real lies behind its foreground)."""
    return can_be_foreground(row) and row.kind in (InputKind.VIDEO, InputKind.FRAME_FOLDER)


class DecodeStage(RowStage[InputRow]):
    """Decode an input once into the work folder; the row gets its clip path and source facts."""

    stage = Stage.DECODE
    row_type = InputRow
    reads = ("item",)
    writes = ("kind", "clip_path", "background_path", "layer_paths", "layer_sources", "composite_psnr",
              "frame_indices", "source_frames", "source_height", "source_width", "fingerprint")

    def __init__(self, config: BuildConfig, work_dir: str, remote: str | None = None) -> None:
        self.config = config
        self.work_dir = Path(work_dir)
        self.remote = remote  # `--out` on object storage: decoded clips pass to other nodes through it

    def process(self, row: InputRow) -> None:
        decoded = decode(row.item, self.config)
        clip_path = self.work_dir / f"{row.input_id}.npz"
        decoded.clip.save(clip_path)
        if self.remote:
            share(clip_path, self.work_dir.parent, self.remote)
        if decoded.background is not None:
            row.background_path = self._save(decoded.background, f"{row.input_id}.bg.npz")
        row.layer_paths = [self._save(layer, f"{row.input_id}.layer{k}.npz") for k, layer in enumerate(decoded.layers)]
        row.layer_sources, row.composite_psnr = decoded.layer_sources, decoded.composite_psnr
        row.source_height, row.source_width = decoded.clip.source_size
        row.kind, row.clip_path, row.frame_indices = decoded.kind, str(clip_path), decoded.clip.frame_indices
        row.source_frames, row.fingerprint = decoded.source_frames, decoded.fingerprint

    def _save(self, clip: VideoClip, name: str) -> str:
        """A clip beside the input's own, shared with the other nodes when `--out` is on object storage."""
        path = self.work_dir / name
        clip.save(path)
        if self.remote:
            share(path, self.work_dir.parent, self.remote)
        return str(path)


class MatteStage(RowStage[InputRow]):
    """Matte every input that can be a foreground; the alpha is stored in its clip file. When the build makes
    `video_decomposed` samples, a matted real video also gets its clean plate (`datagen.cleanplate`), made from the
    whole source clip, matted by the same backend.

    A matting failure does not fail the input: it can still serve as a background. It is kept in `matte_error` and
    reported if the input ends up unused. Likewise a clip with no clean plate keeps why in `plate_error`, and serves
    in every other role.
    """

    stage = Stage.MATTE
    row_type = InputRow
    reads = ("item", "kind", "clip_path", "source_frames")
    writes = ("matting", "matte_error", "camera_motion", "plate_path", "plate_scores", "plate_error")

    def __init__(self, config: BuildConfig, work_dir: str | None = None, remote: str | None = None) -> None:
        self.config = config
        self.backend = load_matting(config.matting, config.device, config.access)
        self.given = load_matting("given")
        self.plate = load_clean_plate(config.clean_plate) if SampleKind.VIDEO_DECOMPOSED in config.kinds else None
        self.work_dir = Path(work_dir) if work_dir else None
        self.remote = remote

    def process(self, row: InputRow) -> None:
        if not can_be_foreground(row):
            return
        clip = VideoClip.load(self._local(Path(row.clip_path)))
        # Stills carry their own alpha; the chosen backend is for videos.
        backend = self.backend if row.kind.is_video else self.given
        try:
            matte = backend(clip)
        except Exception as exc:
            row.matte_error = Failure.of(self.stage, exc)
            return
        clip.alpha = np.clip(matte.alpha.astype(np.float32), 0.0, 1.0)
        clip.save(Path(row.clip_path))
        if self.remote:
            share(Path(row.clip_path), self.work_dir.parent, self.remote)
        row.matting = matte.backend
        row.camera_motion = matte.camera
        row.devices[StageName.MATTE.value] = matte.backend.device
        if self.plate is not None and can_be_decomposed(row):
            self._clean_plate(row, clip, backend)

    def _clean_plate(self, row: InputRow, clip: VideoClip, backend: MattingBackend) -> None:
        """The clip's clean plate into the work folder, or why there is none (`plate_error`), timed apart."""
        start = time.perf_counter()
        try:
            plate = make_plate(row.item, clip, row.source_frames, backend, self.config, self.plate)
        except Exception as exc:  # no decomposed sample, but the input still serves in every other role
            row.plate_error = Failure.of(Stage.CLEAN_PLATE, exc)
        else:
            path = Path(row.clip_path).with_name(f"{row.input_id}.plate.npz")
            VideoClip(plate.background, plate.invented.astype(np.float32), fps=clip.fps,
                      frame_indices=clip.frame_indices, source_size=clip.source_size).save(path)
            if self.remote:
                share(path, self.work_dir.parent, self.remote)
            row.plate_path, row.plate_scores = str(path), plate.scores
        row.seconds[Stage.CLEAN_PLATE.value] = time.perf_counter() - start

    def _local(self, path: Path) -> Path:
        return obtain(path, self.work_dir.parent, self.remote) if self.remote else path


class ComposeStage(RowStage[SampleRow]):
    """Build the four layers of a planned sample and write them as media files; a sample with several foreground
    layers also gets a foreground and an alpha file per layer, and the four layers are their flattened view."""

    stage = Stage.COMPOSE
    row_type = SampleRow
    reads = ("sample_id", "kind", "fg", "bg_clip_path")
    writes = ("placement", "frames_foreground", "frames_background", "num_frames", "height", "width", "clean_plate",
              "composite_psnr", "scores", "unscored")

    def __init__(self, config: BuildConfig, out_dir: str, remote: str | None = None) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.remote = remote  # `--out` on object storage: the media are published from here
        self.encoded = EncodeCache()  # a background behind several foregrounds is encoded once (same frames, bytes)

    def process(self, row: SampleRow) -> None:
        config = self.config
        rng = np.random.default_rng([config.seed, int(row.sample_id[:12], 16)])
        fg_clip = VideoClip.load(self._local(Path(row.fg.clip_path)))
        bg_clip = VideoClip.load(self._local(Path(row.bg_clip_path)))
        if fg_clip.alpha is None:
            raise ValueError("foreground clip has no alpha (matting did not run)")
        canvas = bg_clip.frames.shape[1:3]
        aligned = row.fg.kind is InputKind.LAYERED_IMAGE
        placement = Placement() if aligned else choose_placement(fg_clip.alpha, canvas, rng, config.scale_range)
        bg_index = len(bg_clip.frames) // 2
        foreground_layers: list[tuple[np.ndarray, np.ndarray]] = []
        if row.kind is SampleKind.IMAGE_FROZEN and row.fg.layer_paths:
            clips = [VideoClip.load(self._local(Path(path))) for path in row.fg.layer_paths]
            layers, foreground_layers = freeze_layers([(c.frames[0], c.alpha[0]) for c in clips],
                                                      bg_clip.frames[bg_index], placement, config.frames)
            bg_indices = [bg_clip.frame_indices[bg_index]]
        elif row.kind is SampleKind.IMAGE_FROZEN:
            layers = freeze(fg_clip.frames[0], fg_clip.alpha[0], bg_clip.frames[bg_index], placement, config.frames)
            bg_indices = [bg_clip.frame_indices[bg_index]]
        elif row.kind is SampleKind.VIDEO_DECOMPOSED:
            plate = VideoClip.load(self._local(Path(row.fg.plate_path)))
            layers = decompose(fg_clip.frames, fg_clip.alpha, plate.frames)
            bg_indices = fg_clip.frame_indices
            video_io.write_alpha_video(resolve_media(self.out_dir, plate_invented_uri(row.sample_id)),
                                       quantise(plate.alpha > 0.5), config.fps)
            row.clean_plate, row.composite_psnr = config.clean_plate, round(psnr(fg_clip.frames, layers.blended), 3)
            row.scores.update(row.fg.plate_scores)
            row.unscored.update({name: "the foreground covers no pixel of two consecutive frames" for name in
                                 PLATE_SCORES if row.scores.get(name) is None})
        else:
            background, bg_indices = bg_clip.frames, bg_clip.frame_indices
            if len(background) == 1:  # a still used as a static background
                background = np.repeat(background, config.frames, axis=0)
            layers = copy_paste(fg_clip.frames, fg_clip.alpha, background, placement)
        if row.kind is not SampleKind.VIDEO_DECOMPOSED:
            row.unscored.update(dict.fromkeys(PLATE_SCORES, "no clean plate: not a video_decomposed sample"))
        for layer in Layer:
            path = resolve_media(self.out_dir, media_uri(row.sample_id, layer))
            if layer == Layer.ALPHA:
                video_io.write_alpha_video(path, layers.alpha, config.fps, self.encoded)
            else:
                video_io.write_rgb_video(path, layers.layer(layer), config.fps, config.crf, self.encoded,
                                         config.x264_preset)
        for index, (colour, alpha) in enumerate(foreground_layers):
            video_io.write_rgb_video(self._layer_path(row, index, Layer.FOREGROUND), colour, config.fps, config.crf,
                                     self.encoded, config.x264_preset)
            video_io.write_alpha_video(self._layer_path(row, index, Layer.ALPHA), alpha, config.fps, self.encoded)
        if self.remote:
            upload_media(self.out_dir, self.remote, row.sample_id)
            if row.kind is SampleKind.VIDEO_DECOMPOSED:
                share(resolve_media(self.out_dir, plate_invented_uri(row.sample_id)), self.out_dir, self.remote)
            for index in range(len(foreground_layers)):
                for layer in (Layer.FOREGROUND, Layer.ALPHA):
                    share(self._layer_path(row, index, layer), self.out_dir, self.remote)
        row.placement, row.frames_foreground, row.frames_background = placement.to_json(), fg_clip.frame_indices, \
            bg_indices
        row.num_frames, row.height, row.width = config.frames, int(canvas[0]), int(canvas[1])

    def _local(self, path: Path) -> Path:
        return obtain(path, self.out_dir, self.remote) if self.remote else path

    def _layer_path(self, row: SampleRow, index: int, layer: Layer) -> Path:
        return resolve_media(self.out_dir, layer_media_uri(row.sample_id, index, layer))


class CaptionStage(RowStage[SampleRow]):
    """Per-layer captions from the configured captioner; a learned one sees the layers as written."""

    stage = Stage.CAPTION
    row_type = SampleRow
    reads = ("sample_id", "kind", "fg", "bg")
    writes = ("captioner", "captioner_sha256", "captions", "caption_missing")

    def __init__(self, config: BuildConfig, out_dir: str, remote: str | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.remote = remote
        self.captioner = load_captioner(config.captioner, config.device, config.access)

    def process(self, row: SampleRow) -> None:
        # Decoding the four layer files back costs time: only captioners that look at pixels get them.
        layers = sample_layers(self.out_dir, self.remote, row.sample_id) if self.captioner.needs_pixels else None
        captions = self.captioner(row, layers)
        row.captions, row.caption_missing = dict(captions), captions.missing
        row.captioner = self.captioner.name
        row.captioner_sha256 = getattr(self.captioner, "weights_sha256", None)  # learned captioners only
        device = getattr(self.captioner, "torch_device", None)  # learned captioners only
        if device is not None:
            row.devices[StageName.CAPTION.value] = device


class ScoreStage(RowStage[SampleRow]):
    """Read the files back as written and compute the pixel scores: recomposition, alpha quality, SSIM."""

    stage = Stage.SCORE
    row_type = SampleRow
    reads = ("sample_id",)
    writes = ("scores",)

    def __init__(self, config: BuildConfig, out_dir: str, remote: str | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.remote = remote
        self.temporal_ssim = RememberedSSIM()  # a background behind several foregrounds is scored once

    def process(self, row: SampleRow) -> None:
        layers = sample_layers(self.out_dir, self.remote, row.sample_id)
        alpha = layers[Layer.ALPHA]
        row.scores[RECOMPOSE_PSNR] = recomposition_psnr(layers[Layer.FOREGROUND], alpha, layers[Layer.BACKGROUND],
                                                        layers[Layer.BLENDED])
        row.scores.update(alpha_quality(alpha).columns())
        frames = {Layer.FOREGROUND: on_grey(layers[Layer.FOREGROUND], alpha),
                  Layer.BACKGROUND: layers[Layer.BACKGROUND], Layer.BLENDED: layers[Layer.BLENDED]}
        for layer, clip in frames.items():
            ssim = self.temporal_ssim(clip)
            row.scores.update({f"ssim_{layer.value}_{stat}": value for stat, value in asdict(ssim).items()})


CLIP_OUTPUTS = (*CLIP_COLUMNS, CLIP_EMBEDDING)


class ClipStage(RowStage[SampleRow]):
    """CLIP scores and the blended-layer embedding; all null (with the reason) when no CLIP model could be had."""

    stage = Stage.SCORE
    row_type = SampleRow
    reads = ("sample_id", "captions")
    writes = ("scores", "clip_embedding", "clip_model", "clip_weights_sha256", "unscored")

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

    def process(self, row: SampleRow) -> None:
        if self.scorer is None:
            row.unscored.update(dict.fromkeys(CLIP_OUTPUTS, self.unavailable))
            return
        from filters.clip import clip_scores

        captions = {layer.value: row.captions.get(layer) for layer in CAPTIONED_LAYERS}
        try:
            layers = sample_layers(self.out_dir, self.remote, row.sample_id)
            scores = clip_scores(self.scorer, layers[Layer.FOREGROUND], layers[Layer.ALPHA],
                                 layers[Layer.BACKGROUND], layers[Layer.BLENDED], captions)
        except Exception as exc:  # a score that cannot be computed is null with its reason, not a lost sample
            row.unscored.update(dict.fromkeys(CLIP_OUTPUTS, f"CLIP failed: {one_line(exc)}"))
            return
        row.devices[StageName.CLIP.value] = self.scorer.device
        row.scores.update(clip_text_foreground=scores.text_foreground, clip_text_background=scores.text_background,
                          clip_text_blended=scores.text_blended, clip_consistency_mean=scores.consistency_mean,
                          clip_consistency_min=scores.consistency_min)
        row.clip_embedding, row.clip_model = scores.embedding, self.scorer.model_id
        row.clip_weights_sha256 = self.scorer.weights_sha256
        row.unscored.update(
            {f"clip_text_{layer}": "no caption for this layer" for layer, text in captions.items() if not text})
