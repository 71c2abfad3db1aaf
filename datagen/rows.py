"""The rows that cross the runner, typed: an input (`InputRow`) through decode and matte, a sample (`SampleRow`)
through compose, caption, score and CLIP.

A stage gets its rows as these dataclasses and changes them in place; between stages (a Ray block, a worker
process) a batch holds them as JSON text, written and read back by one codec (pydantic) into the same dataclass.
Each stage declares the fields it reads and writes (`RowStage.reads` / `writes`); `tests/test_rows.py` checks the
declarations against the stage chain and against what the stages really change.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from enum import Enum
from functools import cache
from typing import TypeVar

from pydantic import TypeAdapter

from datagen.config import BuildConfig
from datagen.matting.base import BackendInfo
from datagen.sources import SourceItem
from filters.policy import Decision
from manifests.errors import one_line
from manifests.layers import CAPTIONED_LAYERS, Adapter, ForegroundColour, InputKind, Layer, SampleKind, Stage
from manifests.schema import (
    ADAPTER,
    CAPTION_LAYERS,
    CAPTION_MISSING,
    CLEAN_PLATE,
    CLIP_EMBEDDING,
    CLIP_MODEL,
    DUPLICATE_OF,
    FLAGS,
    FOREGROUND_COLOUR,
    GROUP_BACKGROUND,
    GROUP_FOREGROUND,
    KEEP,
    KIND,
    LAYERS_CAPTION,
    LAYERS_SOURCE,
    LAYERS_URI_ALPHA,
    LAYERS_URI_FOREGROUND,
    PLATE_INVENTED_URI,
    REJECT_REASONS,
    SAMPLE_ID,
    SCORES,
    SOURCE_COMPANIONS,
    SOURCE_COMPOSITE_PSNR,
    SPLIT,
    caption_column,
    layer_media_uri,
    media_uri,
    plate_invented_uri,
    uri_column,
)

Batch = dict[str, list]  # {"key": [...], "row": [json, ...]}: what a runner passes between stages
KEY, ROW = "key", "row"


class Status(str, Enum):
    OK = "ok"
    FAILED = "failed"  # a stage raised on this row; the stages after it pass it on untouched
    DUPLICATE = "duplicate"  # an input whose content another input already holds: not built (`item.duplicate_of`)


@dataclass(kw_only=True)
class Failure:
    """Why a row (or an input's matting) failed: where, the error class and a one-line message."""

    stage: Stage
    error_class: str
    message: str

    @classmethod
    def of(cls, stage: Stage, exc: BaseException) -> Failure:
        return cls(stage=stage, error_class=type(exc).__name__, message=one_line(exc))


@dataclass(kw_only=True)
class Row(ABC):
    """What every row carries: its status, the failure that ended it, time per stage, and devices."""

    status: Status = Status.OK
    failure: Failure | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> seconds spent on this row
    devices: dict[str, str] = field(default_factory=dict)  # learned stage -> the device its backend really ran on

    @property
    @abstractmethod
    def key(self) -> str:
        """What the runner tracks the row by: the input id, or the sample id."""

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def fail(self, failure: Failure) -> None:
        self.status, self.failure = Status.FAILED, failure


class FromItem:
    """The `input_id` and `uri` of the discovered input (`item`) a row or a sample's input holds."""

    item: SourceItem

    @property
    def input_id(self) -> str:
        return self.item.input_id

    @property
    def uri(self) -> str:
        return self.item.uri


@dataclass(kw_only=True)
class InputRow(FromItem, Row):
    """One discovered input on its way through decode and matte."""

    item: SourceItem
    kind: InputKind  # the discovered kind, refined by decode (a video with alpha, an RGBA image, ...)
    # decode
    clip_path: str | None = None  # the decoded `VideoClip` (.npz) in the work folder; matte adds its alpha
    background_path: str | None = None  # a layered image's own background clip
    layer_paths: list[str] = field(default_factory=list)  # its foreground layers' clips, when it has several
    layer_sources: list[str] = field(default_factory=list)  # what each foreground layer was read from
    composite_psnr: float | None = None  # its layers over its background vs its own composite, at source size
    frame_indices: list[int] = field(default_factory=list)
    source_frames: int | None = None
    source_height: int | None = None
    source_width: int | None = None
    fingerprint: str | None = None  # the content fingerprint of its source frames (`manifests.identity`)
    # matte
    matting: BackendInfo | None = None  # the backend that matted it (None: not a foreground, or matting failed)
    matte_error: Failure | None = None  # matting refused it: it can still serve as a background
    camera_motion: dict | None = None  # how the camera moved, where the backend measured it (bgsub: px, `stabilised`)
    # clean plate (matte, for a matted clip when `video_decomposed` is built): its background and invented pixels
    plate_path: str | None = None  # a `VideoClip` (.npz): the background as frames, the invented mask as alpha
    plate_scores: dict[str, float | None] = field(default_factory=dict)
    plate_error: Failure | None = None  # why no decomposed sample can be made of it (it can still serve otherwise)

    @classmethod
    def discovered(cls, item: SourceItem) -> InputRow:
        row = cls(item=item, kind=item.kind)
        if item.error is not None:
            row.fail(Failure(stage=Stage.DISCOVER, error_class="InputError", message=item.error))
        elif item.duplicate_of is not None:
            row.status = Status.DUPLICATE
        return row

    def mark_duplicate(self, of: str, reason: str) -> None:
        """This input holds the content of input `of`, which alone is built."""
        self.item = replace(self.item, duplicate_of=of, duplicate_reason=reason)
        self.status = Status.DUPLICATE

    @property
    def group(self) -> str:
        """The identity of the input's object (what must stay on one side of the train / val line): the user's group,
        else the content fingerprint."""
        return self.item.group or self.fingerprint or self.input_id

    @property
    def background_group(self) -> str:
        """The identity of what is behind the object in this input (a background clip: itself): the user's
        `background_group`, else the input's own group."""
        return self.item.background_group or self.group

    @property
    def key(self) -> str:
        return self.item.input_id


@dataclass(kw_only=True)
class SampleInput(FromItem):
    """What a sample carries of one of its inputs: the input, its decoded clip and how it was matted."""

    item: SourceItem
    kind: InputKind
    clip_path: str | None
    matting: BackendInfo | None
    layer_paths: list[str] = field(default_factory=list)
    layer_sources: list[str] = field(default_factory=list)
    composite_psnr: float | None = None
    plate_path: str | None = None
    plate_scores: dict[str, float | None] = field(default_factory=dict)
    group: str | None = None  # `InputRow.group` (None: a row encoded before identities were carried)
    background_group: str | None = None  # `InputRow.background_group`

    @classmethod
    def of(cls, row: InputRow) -> SampleInput:
        return cls(item=row.item, kind=row.kind, clip_path=row.clip_path, matting=row.matting,
                   layer_paths=row.layer_paths, layer_sources=row.layer_sources, composite_psnr=row.composite_psnr,
                   plate_path=row.plate_path, plate_scores=row.plate_scores, group=row.group,
                   background_group=row.background_group)

    @property
    def adapter(self) -> Adapter:
        """How this input was read, as a foreground: its layered-image layout, else a pasted video or RGBA image."""
        if self.item.adapter is not None:
            return self.item.adapter
        return Adapter.COPY_PASTE if self.kind.is_video else Adapter.RGBA_IMAGE


@dataclass(kw_only=True)
class SampleRow(Row):
    """One planned sample on its way through compose, caption, score and CLIP; `manifest_row` projects it."""

    sample_id: str
    kind: SampleKind
    split: str
    fg: SampleInput
    bg: SampleInput
    bg_clip_path: str  # the background clip to paste onto (a layered image's own background)
    # compose
    placement: str | None = None  # JSON {"scale", "dx", "dy"}
    frames_foreground: list[int] = field(default_factory=list)
    frames_background: list[int] = field(default_factory=list)
    num_frames: int | None = None
    height: int | None = None
    clean_plate: str | None = None  # `video_decomposed`: the clean-plate method behind its foreground
    composite_psnr: float | None = None  # `video_decomposed`: the blended layer (before encoding) vs the clip itself
    width: int | None = None
    # caption
    captioner: str | None = None
    captioner_sha256: str | None = None  # a learned captioner's weights (over the model folder's files)
    captions: dict[Layer, str | None] = field(default_factory=dict)
    caption_missing: dict[Layer, str] = field(default_factory=dict)  # layer -> why its caption is null
    # score and CLIP
    scores: dict[str, float | None] = field(default_factory=dict)  # score column -> value (see manifests.schema)
    clip_embedding: list[float] | None = None
    clip_model: str | None = None
    clip_weights_sha256: str | None = None
    unscored: dict[str, str] = field(default_factory=dict)  # score column -> why it is null

    @property
    def key(self) -> str:
        return self.sample_id

    @property
    def background_group(self) -> str | None:
        """The identity of the sample's background: the background input's (a layered image's or a decomposed clip's
        own background: the foreground input's `background_group`)."""
        return self.bg.background_group

    @property
    def caption_layers(self) -> int:
        """How many of the captioned layers have a non-empty caption."""
        return sum(bool((self.captions.get(layer) or "").strip()) for layer in CAPTIONED_LAYERS)

    def missing_captions(self) -> str | None:
        """Why the captioned layers without a caption have none, on one line (None: every layer has one)."""
        missing = [f"{layer.value}: {self.caption_missing.get(layer, 'no caption')}" for layer in CAPTIONED_LAYERS
                   if not (self.captions.get(layer) or "").strip()]
        return "; ".join(missing) or None

    @property
    def foreground_colour(self) -> ForegroundColour:
        """Where the foreground's straight colour comes from: solved (decomposed), estimated (a matte pair), source."""
        if self.kind is SampleKind.VIDEO_DECOMPOSED:
            return ForegroundColour.SOLVED
        return ForegroundColour.ESTIMATED if self.fg.adapter is Adapter.MATTE_PAIR else ForegroundColour.SOURCE

    def layer_columns(self) -> dict[str, list]:
        """The layer-list columns: several layers get files of their own (captions from the input's sidecar); one
        layer is the foreground itself."""
        count = len(self.fg.layer_paths)
        if count > 1:
            captions = list(self.fg.item.layer_captions[:count])
            return {LAYERS_URI_FOREGROUND: [layer_media_uri(self.sample_id, k, Layer.FOREGROUND) for k in range(count)],
                    LAYERS_URI_ALPHA: [layer_media_uri(self.sample_id, k, Layer.ALPHA) for k in range(count)],
                    LAYERS_CAPTION: captions + [None] * (count - len(captions))}
        return {LAYERS_URI_FOREGROUND: [media_uri(self.sample_id, Layer.FOREGROUND)],
                LAYERS_URI_ALPHA: [media_uri(self.sample_id, Layer.ALPHA)],
                LAYERS_CAPTION: [self.captions.get(Layer.FOREGROUND)]}

    def manifest_row(self, config: BuildConfig, decision: Decision) -> dict:
        """This finished sample as a row of the manifest (`SAMPLE_SCHEMA`), with the policy's decision on it."""
        fg, bg, matting = self.fg, self.bg, self.fg.matting
        decomposed = self.kind is SampleKind.VIDEO_DECOMPOSED
        return {
            SAMPLE_ID: self.sample_id, KIND: self.kind.value, ADAPTER: fg.adapter.value, SPLIT: self.split,
            **{uri_column(layer): media_uri(self.sample_id, layer) for layer in Layer},
            **{caption_column(layer): self.captions.get(layer) for layer in CAPTIONED_LAYERS},
            CAPTION_LAYERS: self.caption_layers, CAPTION_MISSING: self.missing_captions(),
            **self.layer_columns(),
            "num_frames": self.num_frames, "fps": config.fps, "height": self.height, "width": self.width,
            "input_id_foreground": fg.input_id, "input_id_background": bg.input_id,
            GROUP_FOREGROUND: fg.group, GROUP_BACKGROUND: self.background_group,
            "source_foreground": fg.uri, "source_background": bg.item.background_source,
            LAYERS_SOURCE: fg.layer_sources or [fg.uri], SOURCE_COMPANIONS: list(fg.item.companions),
            SOURCE_COMPOSITE_PSNR: self.composite_psnr if decomposed else
            fg.composite_psnr if fg.input_id == bg.input_id else None,
            CLEAN_PLATE: self.clean_plate, FOREGROUND_COLOUR: self.foreground_colour.value,
            PLATE_INVENTED_URI: plate_invented_uri(self.sample_id) if decomposed else None,
            "frames_foreground": self.frames_foreground, "frames_background": self.frames_background,
            "placement": self.placement, "matting_backend": matting.name, "matting_model": matting.model_id,
            "matting_weights_sha256": matting.weights_sha256, "matting_revision": matting.revision,
            "random_weights": matting.random_weights, "captioner": self.captioner,
            "captioner_weights_sha256": self.captioner_sha256, "seed": config.seed,
            "config_fingerprint": config.fingerprint(),
            **{name: self.scores.get(name) for name in SCORES},
            CLIP_EMBEDDING: self.clip_embedding, CLIP_MODEL: self.clip_model,
            "clip_weights_sha256": self.clip_weights_sha256,
            KEEP: decision.keep, REJECT_REASONS: decision.reject_reasons, FLAGS: decision.flags,
            DUPLICATE_OF: decision.duplicate_of,
        }


R = TypeVar("R", bound=Row)


@cache
def _adapter(row_type: type[R]) -> TypeAdapter:
    return TypeAdapter(row_type)


def encode(row: Row) -> str:
    """One row as JSON (what a batch and a committed input hold)."""
    return _adapter(type(row)).dump_json(row).decode()


def decode(text: str, row_type: type[R]) -> R:
    """The row that `encode` wrote, as a `row_type` dataclass again."""
    return _adapter(row_type).validate_json(text)


def to_batch(rows: list[R]) -> Batch:
    """Rows -> a batch: their keys, and each row as JSON."""
    return {KEY: [row.key for row in rows], ROW: [encode(row) for row in rows]}


def from_batch(batch: Batch, row_type: type[R]) -> list[R]:
    """A batch -> the rows it holds, as `row_type` dataclasses."""
    return [decode(str(text), row_type) for text in batch[ROW]]
