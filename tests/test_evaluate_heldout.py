"""The held-out evaluation: all four tasks given only what a user would give, several seeds, intervals overall and per
object family, given layers kept exactly, external predictions scored like the models, one record per sample."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY

import layerflow_model.evaluate as evaluate_module
from datagen.build import build as build_dataset
from datagen.config import BuildConfig
from datagen.demo import make_demo_source
from datagen.pipeline import LocalRunner
from layerflow_model.config import ConfigError, SampleSettings, TrainConfig, preset
from layerflow_model.data import ClipStore, read_rows
from layerflow_model.evaluate import (
    METRICS,
    NO_SCORER,
    TASK_METRICS,
    ExternalPredictions,
    evaluate,
    sample_seed,
    write_eval,
)
from layerflow_model.layout import Task
from layerflow_model.train import train
from manifests.identity import family_of
from manifests.layers import Layer
from manifests.metrics import alpha_coverage
from manifests.video_io import quantise

LIMIT, SEEDS = 3, 2
SETTINGS = SampleSettings(steps=2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo source built small (32x32, 4 frames), half of it held out: several samples and families in val."""
    root = tmp_path_factory.mktemp("heldout")
    make_demo_source(root / "src")
    config = BuildConfig(size=(32, 32), frames=4, seed=6, val_fraction=0.5, clip="none")
    build_dataset(str(root / "src"), root / "ds", config, LocalRunner())
    return root / "ds"


@pytest.fixture(scope="module")
def checkpoint(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = TrainConfig(manifest=str(dataset), out=str(tmp_path_factory.mktemp("run")), steps=1, batch_size=2,
                         lr=1e-3, warmup=1, checkpoint_every=1, task_weights={t.value: 1.0 for t in Task})
    return train(config, preset("toy", **TINY), progress=False).checkpoint


@pytest.fixture(scope="module")
def rows(dataset: Path):
    return read_rows(str(dataset), "val")[:LIMIT]


def truth_at_source_size(dataset: Path, rows) -> dict[str, dict[Layer, np.ndarray]]:
    """Each sample's true layers as uint8 at the dataset's 32x32 and all 4 frames: evaluate must fit them."""
    store = ClipStore(str(dataset), 32, 32)
    return {row.sample_id: {layer: quantise(x) for layer, x in store.layers(row).items()} for row in rows}


@pytest.fixture(scope="module")
def evaluated(dataset, checkpoint, rows):
    """One evaluation, with the truth itself as external decompose predictions, a stand-in text scorer, and a spy
    on `run_task` and on the scorer recording what each was given."""
    calls, scored = [], []
    real = evaluate_module.run_task

    def spy(parts, task, captions, given, settings):
        calls.append((Task(task), dict(captions), set(given or {}), settings.seed))
        return real(parts, task, captions, given, settings)

    def scorer(frames: np.ndarray, caption: str) -> float:
        scored.append((frames.dtype, frames.shape, caption))
        return float(frames.mean() / 255.0)

    truth = ExternalPredictions(Task.DECOMPOSE, truth_at_source_size(dataset, rows),
                                notes={rows[0].sample_id: "fell back: no motion"})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluate_module, "run_task", spy)
        result = evaluate(checkpoint, str(dataset), "val", SETTINGS, limit=LIMIT, seeds=SEEDS, progress=False,
                          predictions={"truth": truth}, text_scorer=scorer)
    return result, calls, scored


def test_all_four_tasks_are_in_the_summary_and_the_table(evaluated):
    result, _, _ = evaluated
    metrics = result.summary["metrics"]
    for model in ("trained", "untrained"):
        assert {task: set(names) for task, names in metrics[model].items()} == \
            {task.value: set(names) for task, names in TASK_METRICS.items()}
    assert set(metrics["trivial"]) == {"decompose", "fg2bg", "bg2fg"}  # a trivial predictor generates nothing
    assert set(metrics["truth"]) == {"decompose"}
    table = result.table()
    assert table.startswith("metric")
    assert all(f"{task.value} {name}" in table for task, name in METRICS)
    assert set(result.summary["inputs"]) == {task.value for task in Task}


def test_given_layers_come_back_exactly(evaluated):
    result, _, _ = evaluated
    for record in result.per_sample:
        for model in ("trained", "untrained", "trivial"):
            assert record["metrics"][model]["fg2bg"]["given_exact"] == 1.0
            assert record["metrics"][model]["bg2fg"]["given_exact"] == 1.0


def test_each_task_is_given_only_what_a_user_has(evaluated, rows):
    result, calls, _ = evaluated
    assert len(calls) == len(rows) * SEEDS * 2 * len(Task)  # every sample, seed, sampled model and task
    wanted = {Task.DECOMPOSE: ({Layer.BLENDED}, {Layer.BLENDED}), Task.FG2BG: ({Layer.FOREGROUND, Layer.ALPHA},
              {Layer.BACKGROUND, Layer.BLENDED}), Task.BG2FG: ({Layer.BACKGROUND}, {Layer.FOREGROUND, Layer.BLENDED}),
              Task.GENERATE: (set(), {Layer.FOREGROUND, Layer.BACKGROUND, Layer.BLENDED})}
    for task, captions, given, _ in calls:
        layers, captioned = wanted[task]
        assert given == layers
        assert {layer for layer, text in captions.items() if text} == captioned
    assert "no text" in result.summary["inputs"]["decompose"]  # the layout blanks decompose's blended prompt


def test_seeds_differ_per_seed_and_are_shared_by_models_and_tasks(evaluated, rows):
    _, calls, _ = evaluated
    seeds = {seed for _, _, _, seed in calls}
    assert seeds == {sample_seed(SETTINGS.seed, row.sample_id, k) for row in rows for k in range(SEEDS)}
    assert len(seeds) == len(rows) * SEEDS
    assert sample_seed(0, "a", 0) == sample_seed(0, "a", 0) != sample_seed(1, "a", 0)


def test_intervals_bracket_the_mean(evaluated):
    result, _, _ = evaluated
    groups = [result.summary["metrics"], *result.summary["by_family"].values()]
    checked = 0
    for group in groups:
        for tasks in group.values():
            for names in tasks.values():
                for stats in names.values():
                    if stats["mean"] is None:
                        assert stats["n"] == 0
                        continue
                    assert stats["low"] <= stats["high"]
                    assert stats["low"] - 1e-9 <= stats["mean"] <= stats["high"] + 1e-9
                    assert 1 <= stats["n"] <= LIMIT
                    checked += 1
    assert checked > 100


def test_per_family_groups_by_the_foreground_group(evaluated, rows):
    result, _, _ = evaluated
    families = Counter(family_of(row.group_foreground) for row in rows)
    assert result.summary["families"] == dict(families)
    for name, count in families.items():
        assert result.summary["by_family"][name]["trained"]["decompose"]["alpha_mae"]["n"] == count
    assert [r["family"] for r in result.per_sample] == [family_of(row.group_foreground) for row in rows]


def test_external_predictions_are_fitted_and_scored(evaluated, rows):
    result, _, _ = evaluated
    truth = result.summary["metrics"]["truth"]["decompose"]
    assert truth["alpha_iou"]["mean"] == 1.0 and truth["alpha_mae"]["mean"] == 0.0
    assert truth["alpha_iou"]["low"] == truth["alpha_iou"]["high"] == 1.0
    assert result.per_sample[0]["notes"] == {"truth": "fell back: no motion"}
    assert result.summary["beats"]["decompose"]["alpha_mae"]["truth"] == {"better": False, "separated": True}


def test_a_sample_missing_from_the_predictions_is_an_error(dataset, checkpoint, rows):
    layers = truth_at_source_size(dataset, rows[1:])
    with pytest.raises(ConfigError, match=rows[0].sample_id):
        evaluate(checkpoint, str(dataset), "val", SETTINGS, limit=LIMIT, progress=False,
                 predictions={"classical": ExternalPredictions(Task.DECOMPOSE, layers)})


def test_per_sample_is_one_record_per_sample(evaluated, rows, tmp_path):
    result, _, _ = evaluated
    assert isinstance(result.per_sample, list)
    assert [r["sample_id"] for r in result.per_sample] == [row.sample_id for row in rows]
    record = result.per_sample[0]
    assert record["group_foreground"] == rows[0].group_foreground
    assert len(record["seeds"]["trained"]["decompose"]["alpha_iou"]) == SEEDS
    assert record["metrics"]["trained"]["decompose"]["alpha_iou"] == \
        pytest.approx(np.mean(record["seeds"]["trained"]["decompose"]["alpha_iou"]))
    write_eval(result, tmp_path)
    assert len(json.loads((tmp_path / "eval_per_sample.json").read_text())) == len(rows)
    assert json.loads((tmp_path / "eval.json").read_text())["samples"] == len(rows)


def test_text_alignment_scores_each_layer_against_its_true_caption(evaluated, rows):
    result, _, scored = evaluated
    assert {caption for _, _, caption in scored} == {row.captions[layer] for row in rows
                                                      for layer in (Layer.FOREGROUND, Layer.BACKGROUND, Layer.BLENDED)}
    assert all(dtype == np.uint8 and shape == (2, 16, 16, 3) for dtype, shape, _ in scored)
    generate = result.summary["metrics"]["trained"]["generate"]
    assert all(0.0 <= generate[name]["mean"] <= 1.0 for name in ("clip_foreground", "clip_background", "clip_blended"))


def test_without_a_scorer_text_alignment_is_none_and_said_why(dataset, checkpoint):
    result = evaluate(checkpoint, str(dataset), "val", SETTINGS, limit=1, seeds=1, progress=False)
    assert result.summary["metrics"]["trained"]["generate"]["clip_blended"]["mean"] is None
    assert result.summary["notes"]["generate clip_blended"] == NO_SCORER


def test_alpha_coverage_is_the_mean_alpha():
    alpha = np.zeros((2, 4, 4), np.float32)
    alpha[0, :2] = 1.0  # half of one frame
    assert alpha_coverage(alpha) == pytest.approx(0.25)
    assert alpha_coverage((alpha * 255).astype(np.uint8)) == pytest.approx(0.25)
