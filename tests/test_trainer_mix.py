"""The training data mix: `--mix kind=weight,...`, parsed against `SampleKind`, weighting the kinds of a stage."""

from __future__ import annotations

from collections import Counter

import pytest

from layerflow_model.config import TrainConfig, parse_mix, preset
from layerflow_model.data import VIDEO_KINDS, BatchPlan, Row
from layerflow_model.layout import Task
from manifests.errors import ConfigError
from manifests.layers import Layer, SampleKind

TASKS = {t.value: 1.0 for t in Task}


def rows(counts: dict[SampleKind, int]) -> list[Row]:
    """Rows of the given kinds (the plan never reads their media)."""
    return [Row(f"{kind.value}-{i:02d}", kind, 4, {layer: f"media/{kind.value}-{i}" for layer in Layer},
                {Layer.FOREGROUND: "a cat", Layer.BACKGROUND: "a lawn", Layer.BLENDED: "a cat on a lawn"})
            for kind, n in counts.items() for i in range(n)]


def kind_shares(plan: BatchPlan, steps: int = 600) -> dict[SampleKind, float]:
    counts = Counter(plan.batch(step).kind for step in range(steps))
    return {kind: n / steps for kind, n in counts.items()}


def test_mix_is_parsed_like_tasks_and_checked_against_sample_kinds():
    assert parse_mix("video_copy_paste=1, image_frozen=0.5") == {"video_copy_paste": 1.0, "image_frozen": 0.5}
    assert TrainConfig(manifest="m", out="o", mix="image_frozen=2").mix == {"image_frozen": 2.0}
    assert TrainConfig(manifest="m", out="o").mix is None
    with pytest.raises(ConfigError, match="unknown sample kind.*video_nope"):
        parse_mix("video_nope=1")
    with pytest.raises(ConfigError, match="--mix: 'image_frozen' is not name=weight"):
        parse_mix("image_frozen")
    with pytest.raises(ConfigError, match="positive sum"):
        TrainConfig(manifest="m", out="o", mix={"image_frozen": 0.0})


def test_without_a_mix_kinds_are_drawn_in_proportion_to_their_samples():
    plan = BatchPlan(rows({SampleKind.VIDEO_COPY_PASTE: 2, SampleKind.IMAGE_FROZEN: 6}), preset("toy", frames=2),
                     "content", 2, TASKS, seed=0)
    shares = kind_shares(plan)
    assert shares[SampleKind.IMAGE_FROZEN] == pytest.approx(0.75, abs=0.06)


def test_a_mix_weights_the_kinds_whatever_their_sample_counts():
    plan = BatchPlan(rows({SampleKind.VIDEO_COPY_PASTE: 2, SampleKind.IMAGE_FROZEN: 6}), preset("toy", frames=2),
                     "content", 2, TASKS, seed=0, mix={"video_copy_paste": 3.0, "image_frozen": 1.0})
    shares = kind_shares(plan)
    assert shares[SampleKind.VIDEO_COPY_PASTE] == pytest.approx(0.75, abs=0.06)
    assert plan.describe() == "mix: image_frozen 0.25 (6 samples), video_copy_paste 0.75 (2 samples)"


def test_a_stage_leaves_out_the_kinds_it_does_not_use_and_the_manifest_lacks():
    data = rows({SampleKind.VIDEO_COPY_PASTE: 3, SampleKind.IMAGE_FROZEN: 3})
    mix = {kind.value: 1.0 for kind in SampleKind}  # one mix for every stage
    base = BatchPlan(data, preset("toy", frames=2), "base", 2, TASKS, seed=0, mix=mix)
    assert set(kind_shares(base, 50)) == {SampleKind.VIDEO_COPY_PASTE}  # base learns from moving videos only
    with pytest.raises(ConfigError, match="base stage needs kept video_.*mix"):
        BatchPlan(data, preset("toy", frames=2), "base", 2, TASKS, seed=0, mix={"image_frozen": 1.0})


@pytest.mark.skipif(not hasattr(SampleKind, "VIDEO_DECOMPOSED"), reason="this manifests version has no "
                    "video_decomposed kind yet")
def test_the_base_stage_draws_decomposed_videos_beside_copy_paste_ones():
    decomposed = SampleKind("video_decomposed")
    assert decomposed in VIDEO_KINDS
    plan = BatchPlan(rows({SampleKind.VIDEO_COPY_PASTE: 4, decomposed: 4, SampleKind.IMAGE_FROZEN: 4}),
                     preset("toy", frames=2), "base", 2, TASKS, seed=0)
    shares = kind_shares(plan, 200)
    assert set(shares) == {SampleKind.VIDEO_COPY_PASTE, decomposed}
    assert not any(plan.batch(step).motion for step in range(20))  # moving videos: the motion gate stays off
