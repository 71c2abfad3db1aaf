"""Stages, planning, captions and the policy, each on its own with hand-made rows."""

from __future__ import annotations

import json

import pytest

from datagen.captioning import NoCaptioner, SidecarCaptioner, compose_blended, load_captioner
from datagen.config import BuildConfig
from datagen.matting.base import BackendInfo
from datagen.plan import plan_samples
from datagen.rows import Failure, InputRow, SampleInput, SampleRow, Status, from_batch, to_batch
from datagen.sources import SourceItem
from datagen.stages import RowStage
from manifests.errors import ConfigError, InputError
from manifests.layers import InputKind, Layer, Role, SampleKind, Stage


def input_row(name: str, kind: str = "video", role: str = "any", pool: str = "source", failed: bool = False,
              **captions: str) -> InputRow:
    item = SourceItem(name, f"/data/{name}", InputKind(kind), role=Role(role), pool=pool, **captions)
    row = InputRow(item=item, kind=item.kind, clip_path=f"/work/{name}.npz",
                   matting=BackendInfo("given") if kind != "image" else None)
    if failed:
        row.fail(Failure(stage=Stage.DECODE, error_class="InputError", message="unreadable"))
    return row


def sample(kind: SampleKind, fg: InputRow, bg: InputRow) -> SampleRow:
    return SampleRow(sample_id="s", kind=kind, split="train", fg=SampleInput.of(fg), bg=SampleInput.of(bg),
                     bg_clip_path=bg.clip_path)


class Boom(RowStage[InputRow]):
    stage = Stage.COMPOSE
    row_type = InputRow
    reads = ()
    writes = ("source_frames",)

    def __init__(self) -> None:
        self.seen: list[str] = []

    def process(self, row: InputRow) -> None:
        self.seen.append(row.key)
        if row.key == "bad":
            raise InputError("this one is broken\nsecond line")
        row.source_frames = 1


def test_a_failing_row_is_marked_and_later_stages_skip_it():
    rows = [input_row(k) for k in ("good", "bad", "fine")]
    first, second = Boom(), Boom()
    out = from_batch(second(first(to_batch(rows))), InputRow)
    by_key = {row.key: row for row in out}
    assert by_key["bad"].status is Status.FAILED
    assert by_key["bad"].failure == Failure(stage=Stage.COMPOSE, error_class="InputError",
                                            message="this one is broken")
    assert by_key["good"].source_frames == 1 and by_key["fine"].source_frames == 1
    assert second.seen == ["good", "fine"]  # the failed row is passed on untouched
    assert "compose" in by_key["good"].seconds


def test_plan_never_pastes_a_foreground_on_its_own_video():
    inputs = [input_row(n) for n in ("a", "b", "c")]
    plans = plan_samples(inputs, BuildConfig(backgrounds_per_foreground=2))
    assert len(plans) == 6
    assert all(p.fg.input_id != p.bg.input_id for p in plans)
    assert len({p.sample_id for p in plans}) == 6


def test_plan_respects_roles_and_the_background_pool():
    inputs = [input_row("fg"), input_row("plate", role="background"), input_row("actor", role="foreground")]
    pairs = {(p.fg.input_id, p.bg.input_id) for p in plan_samples(inputs, BuildConfig())}
    assert pairs == {("fg", "plate"), ("actor", "fg"), ("actor", "plate")}
    pooled = [input_row("fg"), input_row("other"), input_row("p1", pool="backgrounds")]
    pairs = {(p.fg.input_id, p.bg.input_id) for p in plan_samples(pooled, BuildConfig())}
    assert pairs == {("fg", "p1"), ("other", "p1")}


def test_plan_is_stable_when_an_input_is_added():
    config = BuildConfig(backgrounds_per_foreground=1)
    before = {p.fg.input_id: p.bg.input_id for p in plan_samples(
        [input_row(n) for n in "abcdef"], config)}
    after = {p.fg.input_id: p.bg.input_id for p in plan_samples(
        [input_row(n) for n in "abcdefg"], config)}
    changed = [fg for fg in before if before[fg] != after[fg]]
    assert len(changed) <= 2  # only foregrounds for which the new input ranks first move


def test_plan_skips_failed_inputs_and_matting_failures():
    unmatted = input_row("c")
    unmatted.matte_error = Failure(stage=Stage.MATTE, error_class="InputError", message="no")
    inputs = [input_row("a"), input_row("b", failed=True), unmatted]
    plans = plan_samples(inputs, BuildConfig())
    assert {(p.fg.input_id, p.bg.input_id) for p in plans} == {("a", "c")}


def test_layered_images_become_one_aligned_frozen_sample():
    row = input_row("l", kind="layered_image")
    row.background_path = "/work/l.bg.npz"
    [plan] = plan_samples([row], BuildConfig())
    assert plan.kind is SampleKind.IMAGE_FROZEN and plan.bg_clip_path == "/work/l.bg.npz"


def test_sidecar_captions_per_layer():
    captioner = SidecarCaptioner()
    video = sample(SampleKind.VIDEO_COPY_PASTE, input_row("a", caption="A red ball."),
                   input_row("b", caption_background="A brick wall."))
    assert captioner(video) == {Layer.FOREGROUND: "A red ball.", Layer.BACKGROUND: "A brick wall.",
                                Layer.BLENDED: "A red ball in front of a brick wall"}
    layered = input_row("l", kind="layered_image", caption_foreground="a cat", caption_background="grass",
                        caption_blended="a cat on grass")
    assert captioner(sample(SampleKind.IMAGE_FROZEN, layered, layered))[Layer.BLENDED] == "a cat on grass"
    missing = captioner(sample(SampleKind.VIDEO_COPY_PASTE, input_row("a"), input_row("b")))
    assert missing == {Layer.FOREGROUND: None, Layer.BACKGROUND: None, Layer.BLENDED: None}


def test_compose_blended_keeps_proper_nouns():
    assert compose_blended("a dog", "NASA launch pad.") == "a dog in front of NASA launch pad"


def test_none_captioner_and_unknown_captioner():
    assert set(NoCaptioner()(sample(SampleKind.VIDEO_COPY_PASTE, input_row("a"), input_row("b"))).values()) == {None}
    with pytest.raises(ConfigError, match="unknown 'blip'"):
        load_captioner("blip")


def test_batches_round_trip_as_json_into_the_same_dataclasses():
    row = input_row("x", caption="é")
    row.frame_indices, row.seconds = [1, 2], {"decode": 0.5}
    plan = sample(SampleKind.VIDEO_COPY_PASTE, row, input_row("y"))
    plan.captions, plan.scores = {Layer.FOREGROUND: "é", Layer.BLENDED: None}, {"recompose_psnr": 41.25}
    assert from_batch(to_batch([row]), InputRow) == [row]
    assert from_batch(to_batch([plan]), SampleRow) == [plan]
    assert json.loads(to_batch([row])["row"][0])["item"]["caption"] == "é"
    assert to_batch([row, plan])["key"] == ["x", "s"]


@pytest.mark.parametrize("torch_first", [False, True])
def test_limit_threads_caps_torch_without_importing_it(torch_first):
    """A stage copy's thread cap reaches torch whether a stage imported it before the cap or imports it after, and
    a chain that never uses torch does not pay for importing it (a fresh interpreter each)."""
    import os
    import subprocess
    import sys

    probe = ("import sys\n"
             + ("import torch\n" if torch_first else "")
             + "from datagen.stages import limit_threads\n"
             "limit_threads(1)\n"
             "imported = 'torch' in sys.modules\n"
             "import cv2, torch\n"
             "print(imported, torch.get_num_threads(), cv2.getNumThreads())\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.split() == [str(torch_first), "1", "1"]
