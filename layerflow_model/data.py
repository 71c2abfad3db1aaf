"""Training clips from a dataset manifest (local or any pyarrow filesystem) and the per-step batch plan.

Every random choice of a step (which kind, which samples, which crop, which task, which frozen frame) comes
from an RNG seeded with (seed, step), so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from layerflow_model.cache import EncoderCache
from layerflow_model.config import ConfigError, ModelConfig, Stage
from layerflow_model.layout import Task, pack, prompts_for
from manifests.dataset import DatasetLike, open_dataset
from manifests.errors import DatasetError
from manifests.layers import CAPTIONED_LAYERS, Layer, SampleKind
from manifests.schema import GROUP_BACKGROUND, GROUP_FOREGROUND, KIND, SAMPLE_ID, caption_column, uri_column
from manifests.video_io import read_layer

# Moving clips (copy-paste videos, and decomposed real videos where this manifests version has them) and frozen
# clips (a layered image repeated). Read off `SampleKind`, so a kind added there is drawn without a change here.
VIDEO_KINDS = tuple(k for k in SampleKind if k.value.startswith("video_"))
FROZEN_KINDS = (SampleKind.IMAGE_FROZEN,)


@dataclass(frozen=True)
class Row:
    """The manifest fields training needs."""

    sample_id: str
    kind: SampleKind
    num_frames: int
    uris: dict[Layer, str]
    captions: dict[Layer, str]
    # The identities its split went by (`manifests.schema.GROUP_*`; None in a manifest before schema 6).
    group_foreground: str | None = None
    group_background: str | None = None


# The manifest columns a Row is made of (the only ones read).
_ROW_COLUMNS = [SAMPLE_ID, KIND, "num_frames", *(uri_column(layer) for layer in Layer),
               *(caption_column(layer) for layer in CAPTIONED_LAYERS), GROUP_FOREGROUND, GROUP_BACKGROUND]


def read_rows(uri: DatasetLike, split: str | None = "train") -> list[Row]:
    """The kept samples of a split (all splits for None), in sample-id order, of the dataset at `uri` (a local path,
    any pyarrow filesystem URI, or an open `Dataset`)."""
    table = open_dataset(uri).manifest(columns=_ROW_COLUMNS, split=split, keep=True).sort_by(SAMPLE_ID)
    return [Row(rec[SAMPLE_ID], SampleKind(rec[KIND]), rec["num_frames"],
                {layer: rec[uri_column(layer)] for layer in Layer},
                {layer: rec[caption_column(layer)] or "" for layer in CAPTIONED_LAYERS},
                rec[GROUP_FOREGROUND], rec[GROUP_BACKGROUND])
            for rec in table.to_pylist()]


def check_captions(rows: list[Row], allow_empty: bool = False) -> str:
    """One line: how many of the kept `rows` have no caption on any layer. All of them (and at least one): a
    DatasetError, unless `allow_empty` (every prompt would be empty: the model would learn no text conditioning)."""
    empty = sum(not any(text.strip() for text in row.captions.values()) for row in rows)
    if rows and empty == len(rows) and not allow_empty:
        raise DatasetError(f"none of the {len(rows)} kept samples has a caption (built with --captioner none, or "
                           "the captioner gave none): every prompt would be empty; pass --allow-empty-captions "
                           "(allow_empty_captions=True) to train anyway")
    return f"{empty} of {len(rows)} kept samples have no caption (they train on empty prompts)"


def fit(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """(T, H, W[, C]) -> (T, height, width[, C]): area resize to cover, then centre crop (as the build does)."""
    h, w = frames.shape[1:3]
    scale = max(height / h, width / w)
    size = (max(width, round(w * scale)), max(height, round(h * scale)))
    if size != (w, h):
        frames = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])
    top, left = (frames.shape[1] - height) // 2, (frames.shape[2] - width) // 2
    return frames[:, top:top + height, left:left + width]


class ClipStore:
    """Decodes the four layers of a sample at the model's size and keeps the most recent ones as uint8, up to
    `max_bytes`; `layers` returns float32 in [0, 1]. The media of a remote dataset are fetched once into its local
    copy (`Dataset.media`), where the next run finds them."""

    def __init__(self, uri: DatasetLike, height: int, width: int, max_bytes: int = 2 << 30) -> None:
        self.dataset = open_dataset(uri)
        self.height, self.width, self.max_bytes = height, width, max_bytes
        self._cache: OrderedDict[str, dict[Layer, np.ndarray]] = OrderedDict()
        self._bytes = 0

    def layers(self, row: Row) -> dict[Layer, np.ndarray]:
        return {layer: x.astype(np.float32) / 255.0 for layer, x in self._decoded(row).items()}

    def _decoded(self, row: Row) -> dict[Layer, np.ndarray]:
        if row.sample_id in self._cache:
            self._cache.move_to_end(row.sample_id)
            return self._cache[row.sample_id]
        out = {layer: fit(read_layer(self.dataset.media(uri), layer), self.height, self.width)
               for layer, uri in row.uris.items()}
        self._cache[row.sample_id] = out
        self._bytes += sum(x.nbytes for x in out.values())
        while self._bytes > self.max_bytes and len(self._cache) > 1:
            _, dropped = self._cache.popitem(last=False)
            self._bytes -= sum(x.nbytes for x in dropped.values())
        return out

    def close(self) -> None:
        """Drop the decoded clips (the fetched media stay in the dataset's local copy)."""
        self._cache.clear()
        self._bytes = 0


@dataclass(frozen=True)
class Pick:
    """One clip of a batch: a sample, where its crop starts, and (motion stage) the frame it is frozen to."""

    row: Row
    start: int
    frozen_at: int | None

    def key(self, config: ModelConfig) -> str:
        """What the clip's pixels depend on (the encoder cache key): the sample, the crop (a frozen video: the one
        frame it repeats), frames, size and layout; never a random draw."""
        crop_ = f"frame{self.start + self.frozen_at}" if self.frozen_at is not None else str(self.start)
        return f"{self.row.sample_id}:{crop_}:{config.frames}:{config.height}x{config.width}:{config.layout.value}"


def clips_of(picks: list[Pick], store: ClipStore, config: ModelConfig) -> torch.Tensor:
    """(B, S*T, 3, H, W) in [-1, 1]: the packed layers of each pick's crop."""
    return torch.stack([pack(crop(store.layers(p.row), p.start, config.frames, p.frozen_at), config.layout)
                        for p in picks])


@dataclass(frozen=True)
class Batch:
    """One homogeneous training batch: one kind, one task, one motion-gate setting."""

    kind: SampleKind
    task: Task
    motion: bool  # the motion adapter is on (frozen clips in the motion and content stages)
    frozen: bool  # every layer is one repeated frame
    picks: list[Pick]
    prompts: list[list[str]]  # B lists of three "i, ..." prompts ('' where the task gives no prompt)

    @property
    def sample_ids(self) -> list[str]:
        return [p.row.sample_id for p in self.picks]

    def clips(self, store: ClipStore, config: ModelConfig, indices: list[int] | None = None) -> torch.Tensor:
        """(B, S*T, 3, H, W) in [-1, 1] (only the picks at `indices` when given)."""
        return clips_of(self.picks if indices is None else [self.picks[i] for i in indices], store, config)


def stage_kinds(stage: Stage) -> tuple[SampleKind, ...]:
    """The sample kinds a stage draws from: base learns from moving videos (copy-paste and decomposed, as the
    original's base stage learnt from real videos); motion and content from videos and frozen images."""
    return VIDEO_KINDS if stage is Stage.BASE else VIDEO_KINDS + FROZEN_KINDS


class BatchPlan:
    """Which samples, crops, task and gate make up the batch of a step (a pure function of seed and step).

    `mix` ({kind: weight}) weights the kinds; a kind the stage does not use or the manifest lacks is left out and the
    rest renormalised. Without it, each kind of the stage is drawn in proportion to its kept samples. Video crops
    start at multiples of `crop_stride` frames, so `crops` can list every clip the plan may draw."""

    def __init__(self, rows: list[Row], config: ModelConfig, stage: Stage, batch_size: int,
                 task_weights: dict[str, float], seed: int, mix: dict[str, float] | None = None,
                 crop_stride: int = 1) -> None:
        self.config, self.stage, self.batch_size, self.seed = config, Stage(stage), batch_size, seed
        self.crop_stride = crop_stride
        usable = [r for r in rows if r.kind in stage_kinds(self.stage)]
        short = [r for r in usable if r.num_frames < config.frames and r.kind in VIDEO_KINDS]
        self.skipped = [r.sample_id for r in short]
        usable = [r for r in usable if r not in short]
        buckets = {kind: [r for r in usable if r.kind is kind] for kind in stage_kinds(self.stage)}
        weights = {k: (len(v) if mix is None else mix.get(k.value, 0.0)) for k, v in buckets.items() if v}
        self.buckets = {k: buckets[k] for k in sorted(weights, key=lambda k: k.value) if weights[k] > 0}
        if not self.buckets:
            wanted = " or ".join(k.value for k in stage_kinds(self.stage))
            weighted = f" with a positive weight in mix {mix}" if mix else ""
            raise ConfigError(f"the {self.stage.value} stage needs kept {wanted} samples of at least "
                              f"{config.frames} frames{weighted}; the manifest has none")
        self.kinds = list(self.buckets)
        self.kind_p = np.array([weights[k] for k in self.kinds], dtype=np.float64)
        self.kind_p /= self.kind_p.sum()
        self.tasks = [Task(t) for t, w in sorted(task_weights.items()) if w > 0]
        self.task_p = np.array([task_weights[t.value] for t in self.tasks], dtype=np.float64)
        self.task_p /= self.task_p.sum()

    def describe(self) -> str:
        """One line: the kinds this stage draws, with their share of the batches and their samples."""
        return "mix: " + ", ".join(f"{k.value} {p:.2f} ({len(self.buckets[k])} samples)"
                                   for k, p in zip(self.kinds, self.kind_p))

    def rng(self, step: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, step])

    def draw(self, step: int, world_size: int = 1) -> tuple[SampleKind, Task, list[Pick]]:
        """(kind, task, picks) for the global batch of a step."""
        rng = self.rng(step)
        kind = self.kinds[rng.choice(len(self.kinds), p=self.kind_p)]
        task = self.tasks[rng.choice(len(self.tasks), p=self.task_p)]
        bucket = self.buckets[kind]
        total = self.batch_size * world_size
        picks = rng.choice(len(bucket), size=total, replace=total > len(bucket))
        out = []
        for i in picks:
            row = bucket[i]
            start = int(rng.integers(0, len(self._starts(row)))) * self.crop_stride if kind in VIDEO_KINDS else 0
            frozen = int(rng.integers(0, self.config.frames)) if self.stage is Stage.MOTION and kind in VIDEO_KINDS \
                else None
            out.append(Pick(row, start, frozen))
        return kind, task, out

    def _starts(self, row: Row) -> range:
        return range(0, row.num_frames - self.config.frames + 1, self.crop_stride)

    def crops(self, row: Row) -> list[Pick]:
        """Every clip of `row` a batch of this plan can hold, one per distinct `Pick.key`."""
        if row.kind not in VIDEO_KINDS:
            return [Pick(row, 0, None)]
        if self.stage is not Stage.MOTION:
            return [Pick(row, start, None) for start in self._starts(row)]
        frames = {start + at: Pick(row, start, at) for start in reversed(self._starts(row))
                  for at in range(self.config.frames)}  # a frozen clip is the one frame it repeats
        return [frames[frame] for frame in sorted(frames)]

    def rows(self) -> list[Row]:
        """The rows this plan draws from, in sample-id order."""
        return sorted((r for bucket in self.buckets.values() for r in bucket), key=lambda r: r.sample_id)

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> Batch:
        """This rank's slice of the step's global batch (pixels are decoded later, by `Batch.clips`)."""
        kind, task, picks = self.draw(step, world_size)
        mine = picks[rank * self.batch_size:(rank + 1) * self.batch_size]
        frozen = kind in FROZEN_KINDS or self.stage is Stage.MOTION
        # The motion adapter is on for frozen clips once it exists (motion stage, and frozen images in content).
        motion = frozen and self.stage is not Stage.BASE
        return Batch(kind, task, motion, frozen, mine, [prompts_for(p.row.captions, task) for p in mine])


@dataclass(frozen=True)
class StepData:
    """What a step trains on: its batch, with the pixels of its clips, or their posteriors when all are cached."""

    step: int
    batch: Batch
    clips: torch.Tensor | None  # (N, S*T, 3, H, W) in [-1, 1]
    posterior: torch.Tensor | None  # (N, K, S*T', C, h, w), see `LatentSpace.posterior`


class StepSource(torch.utils.data.Dataset):
    """Step -> `StepData` for this rank, so that DataLoader workers decode (or read from the cache) the clips of the
    next steps while this one trains. Each worker process keeps its own `ClipStore`."""

    def __init__(self, plan: BatchPlan, dataset: DatasetLike, rank: int = 0, world_size: int = 1,
                 cache: EncoderCache | None = None) -> None:
        self.plan, self.rank, self.world_size, self.cache = plan, rank, world_size, cache
        self.store = ClipStore(dataset, plan.config.height, plan.config.width)

    def __getitem__(self, step: int) -> StepData:
        batch = self.plan.batch(step, self.rank, self.world_size)
        if self.cache is not None:
            found = [self.cache.get(pick.key(self.plan.config)) for pick in batch.picks]
            if all(value is not None for value in found):
                return StepData(step, batch, None, torch.stack(found))
        return StepData(step, batch, batch.clips(self.store, self.plan.config), None)


def _as_is(item: StepData) -> StepData:
    return item


def step_loader(source: StepSource, start: int, steps: int, workers: int = 0, prefetch: int = 2
                ) -> torch.utils.data.DataLoader:
    """The steps start..steps-1 of `source`, in order, `workers` processes decoding `prefetch` steps ahead each."""
    return torch.utils.data.DataLoader(source, batch_size=None, sampler=range(start, steps), num_workers=workers,
                                       prefetch_factor=prefetch if workers else None, collate_fn=_as_is)


def crop(layers: dict[Layer, np.ndarray], start: int, frames: int, frozen_at: int | None = None
         ) -> dict[Layer, np.ndarray]:
    """`frames` consecutive frames from `start` (a frozen image repeats its frame); with `frozen_at`, that one
    frame of the crop repeated (a video frozen for the motion stage)."""
    out = {}
    for layer, x in layers.items():
        window = x[start:start + frames] if len(x) >= start + frames else np.repeat(x[:1], frames, axis=0)
        if frozen_at is not None:
            window = np.repeat(window[frozen_at:frozen_at + 1], frames, axis=0)
        out[layer] = window
    return out
