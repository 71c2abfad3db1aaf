"""Stages, planning, captions and the policy, each on its own with hand-made rows."""

from __future__ import annotations

import json

import pytest

from datagen.captioning import NoCaptioner, SidecarCaptioner, compose_blended, load_captioner
from datagen.config import BuildConfig
from datagen.plan import plan_samples
from datagen.stages import FAILED, OK, RowStage, from_batch, to_batch
from manifests.errors import ConfigError, InputError
from manifests.layers import Layer, Stage


def input_row(name: str, kind: str = "video", role: str = "any", pool: str = "source", status: str = OK) -> dict:
    return {"input_id": name, "key": name, "uri": f"/data/{name}", "kind": kind, "role": role, "pool": pool,
            "status": status, "clip_path": f"/work/{name}.npz", "seconds": {}}


class Boom(RowStage):
    stage = Stage.COMPOSE

    def __init__(self) -> None:
        self.seen: list[str] = []

    def process(self, row: dict) -> None:
        self.seen.append(row["key"])
        if row["key"] == "bad":
            raise InputError("this one is broken\nsecond line")
        row["done"] = True


def test_a_failing_row_is_marked_and_later_stages_skip_it():
    rows = [{"key": k, "status": OK, "seconds": {}} for k in ("good", "bad", "fine")]
    first, second = Boom(), Boom()
    out = from_batch(second(first(to_batch(rows))))
    by_key = {row["key"]: row for row in out}
    assert by_key["bad"]["status"] == FAILED and by_key["bad"]["stage"] == "compose"
    assert by_key["bad"]["message"] == "this one is broken" and by_key["bad"]["error_class"] == "InputError"
    assert by_key["good"]["done"] and by_key["fine"]["done"]
    assert second.seen == ["good", "fine"]  # the failed row is passed on untouched
    assert "compose" in by_key["good"]["seconds"]


def test_plan_never_pastes_a_foreground_on_its_own_video():
    inputs = [input_row(n) for n in ("a", "b", "c")]
    plans = plan_samples(inputs, BuildConfig(backgrounds_per_foreground=2))
    assert len(plans) == 6
    assert all(p["fg"]["input_id"] != p["bg"]["input_id"] for p in plans)
    assert len({p["sample_id"] for p in plans}) == 6


def test_plan_respects_roles_and_the_background_pool():
    inputs = [input_row("fg"), input_row("plate", role="background"), input_row("actor", role="foreground")]
    pairs = {(p["fg"]["input_id"], p["bg"]["input_id"]) for p in plan_samples(inputs, BuildConfig())}
    assert pairs == {("fg", "plate"), ("actor", "fg"), ("actor", "plate")}
    pooled = [input_row("fg"), input_row("other"), input_row("p1", pool="backgrounds")]
    pairs = {(p["fg"]["input_id"], p["bg"]["input_id"]) for p in plan_samples(pooled, BuildConfig())}
    assert pairs == {("fg", "p1"), ("other", "p1")}


def test_plan_is_stable_when_an_input_is_added():
    config = BuildConfig(backgrounds_per_foreground=1)
    before = {p["fg"]["input_id"]: p["bg"]["input_id"] for p in plan_samples(
        [input_row(n) for n in "abcdef"], config)}
    after = {p["fg"]["input_id"]: p["bg"]["input_id"] for p in plan_samples(
        [input_row(n) for n in "abcdefg"], config)}
    changed = [fg for fg in before if before[fg] != after[fg]]
    assert len(changed) <= 2  # only foregrounds for which the new input ranks first move


def test_plan_skips_failed_inputs_and_matting_failures():
    inputs = [input_row("a"), input_row("b", status=FAILED), {**input_row("c"), "matte_error": "no"}]
    plans = plan_samples(inputs, BuildConfig())
    assert {(p["fg"]["input_id"], p["bg"]["input_id"]) for p in plans} == {("a", "c")}


def test_layered_images_become_one_aligned_frozen_sample():
    row = {**input_row("l", kind="layered_image"), "background_path": "/work/l.bg.npz"}
    [plan] = plan_samples([row], BuildConfig())
    assert plan["kind"] == "image_frozen" and plan["bg_clip_path"] == "/work/l.bg.npz"


def test_sidecar_captions_per_layer():
    captioner = SidecarCaptioner()
    video = {"kind": "video_copy_paste", "fg": {"input_id": "a", "caption": "A red ball."},
             "bg": {"input_id": "b", "caption_background": "A brick wall."}}
    assert captioner(video) == {Layer.FOREGROUND: "A red ball.", Layer.BACKGROUND: "A brick wall.",
                                Layer.BLENDED: "A red ball in front of a brick wall"}
    layered = {"input_id": "l", "caption_foreground": "a cat", "caption_background": "grass",
               "caption_blended": "a cat on grass"}
    assert captioner({"kind": "image_frozen", "fg": layered, "bg": layered})[Layer.BLENDED] == "a cat on grass"
    missing = captioner({"kind": "video_copy_paste", "fg": {"input_id": "a"}, "bg": {"input_id": "b"}})
    assert missing == {Layer.FOREGROUND: None, Layer.BACKGROUND: None, Layer.BLENDED: None}


def test_compose_blended_keeps_proper_nouns():
    assert compose_blended("a dog", "NASA launch pad.") == "a dog in front of NASA launch pad"


def test_none_captioner_and_unknown_captioner():
    assert set(NoCaptioner()({}).values()) == {None}
    with pytest.raises(ConfigError, match="unknown 'blip'"):
        load_captioner("blip")


def test_batches_round_trip_as_json():
    rows = [{"key": "x", "status": OK, "seconds": {}, "frames": [1, 2], "caption": "é"}]
    assert from_batch(to_batch(rows)) == rows
    assert json.loads(to_batch(rows)["row"][0])["caption"] == "é"
