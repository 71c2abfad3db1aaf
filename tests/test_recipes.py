"""`reproduce`, the recipe across the whole system, runs end to end on a few steps and writes what it promises."""

from __future__ import annotations

import json

import pytest

from manifests.errors import ConfigError
from recipes.config import ReproduceConfig
from recipes.reproduce import reproduce


@pytest.mark.slow
def test_reproduce_runs_every_step_and_records_each(tmp_path):
    out = tmp_path / "repro"
    config = ReproduceConfig(out=str(out), base_steps=2, motion_steps=1, content_steps=1, sample_steps=1,
                             eval_steps=1, eval_seeds=1, no_ray=True)
    record = reproduce(config, progress=False, log=lambda line: None)
    assert set(record["seconds"]) >= {"demo_source", "build", "filter", "train_base", "train_motion",
                                      "train_content", "sample", "classical", "eval", "report", "total"}
    # held out by object and background: no held-out sample shares an identity with a training sample
    written = json.loads((out / "reproduce.json").read_text())
    assert written["heldout_overlap"] == 0 and isinstance(written["heldout_overlap"], int)
    per_sample = json.loads((out / "eval" / "eval_per_sample.json").read_text())
    assert isinstance(per_sample, list) and len(per_sample) == record["dataset"]["heldout"] >= config.min_heldout
    pairs = {(r["group_foreground"], r["group_background"]) for r in per_sample}
    assert len({group for pair in pairs for group in pair}) > 2
    assert record["eval"]["models"] == ["trained", "untrained", "trivial", "classical"]
    assert (record["eval"]["sampler"], record["eval"]["steps"]) == ("dpm", 1)  # ReproduceConfig.eval_sampler
    assert set(record["eval"]["metrics"]["trained"]) == {"generate", "decompose", "fg2bg", "bg2fg"}
    assert set(record["samples"]) == {"generate", "decompose", "fg2bg", "bg2fg"}
    assert json.loads((out / "reproduce.json").read_text())["eval"]["split"] == "val"
    assert (out / "eval" / "table.txt").read_text().startswith("metric")
    assert (out / "dataset" / "report.html").is_file()
    with pytest.raises(ConfigError, match="not empty"):  # it starts from nothing
        reproduce(config, progress=False, log=lambda line: None)
