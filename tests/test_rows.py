"""The stages' declarations of the row fields they read and write hold: against the stage chain (what is there to
read when a stage runs), against the manifest (every column comes from a field some stage wrote), and against what
the real stages change when they run on a tiny source."""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path

import pytest

from datagen.build import input_stages, sample_stages
from datagen.plan import plan_samples
from datagen.rows import InputRow, SampleRow, from_batch, to_batch
from datagen.scheduling import Resources, plan_stages
from datagen.sources import discover
from datagen.stages import RowStage, set_up
from filters.clip import resolve_clip

EVERY_STAGE_MAY = {"status", "failure", "seconds", "devices"}
PLANNED = {"sample_id", "kind", "split", "fg", "bg", "bg_clip_path"}  # what `plan_samples` sets
PLAN_READS = {"item", "kind", "clip_path", "background_path", "matting", "matte_error"}  # of the input rows
MANIFEST_READS = {"placement", "frames_foreground", "frames_background", "num_frames", "height", "width",
                  "captioner", "captions", "caption_missing", "scores", "clip_embedding",
                  "clip_model"}  # `SampleRow.manifest_row`


def chains(config, tmp_path: Path) -> tuple[list, list]:
    plans = plan_stages(config, Resources(), set(), None)
    return (input_stages(config, tmp_path / "work", plans),
            sample_stages(config, tmp_path / "out", plans, resolve_clip("none")))


def field_names(row_type: type) -> set[str]:
    return {f.name for f in fields(row_type)}


def test_every_declared_field_is_a_field_of_the_row(small_config, tmp_path):
    for spec in [*sum(chains(small_config, tmp_path), [])]:
        stage: type[RowStage] = spec.cls
        assert set(stage.reads) | set(stage.writes) <= field_names(stage.row_type), stage.__name__


def test_each_stage_reads_only_what_is_there_and_the_manifest_gets_all_it_needs(small_config, tmp_path):
    inputs, samples = chains(small_config, tmp_path)
    available = {"item", "kind"} | EVERY_STAGE_MAY  # `InputRow.discovered`
    for spec in inputs:
        assert set(spec.cls.reads) <= available, spec.cls.__name__
        available |= set(spec.cls.writes)
    assert available >= PLAN_READS
    available = PLANNED | EVERY_STAGE_MAY
    for spec in samples:
        assert set(spec.cls.reads) <= available, spec.cls.__name__
        available |= set(spec.cls.writes)
    assert available >= MANIFEST_READS


def changed(before: list, after: list) -> set[str]:
    """The fields whose values differ between two lists of rows (paired by key)."""
    old = {row.key: asdict(row) for row in before}
    return {name for row in after for name, value in asdict(row).items() if old[row.key][name] != value}


@pytest.mark.parametrize("phase", ["inputs", "samples"])
def test_the_stages_change_only_what_they_declare(tiny_source, small_config, tmp_path, phase):
    inputs, samples = chains(small_config, tmp_path)
    (tmp_path / "work").mkdir()
    rows = [InputRow.discovered(item) for item in discover(str(tiny_source))]
    for spec, stage in zip(inputs, set_up(inputs)):
        out = from_batch(stage(to_batch(rows)), InputRow)
        if phase == "inputs":
            wrote = changed(rows, out) - EVERY_STAGE_MAY
            assert wrote and wrote <= set(spec.cls.writes), (spec.cls.__name__, wrote)
        rows = out
    if phase == "inputs":
        return
    plans = plan_samples(rows, small_config)
    assert plans
    for spec, stage in zip(samples, set_up(samples)):
        out = from_batch(stage(to_batch(plans)), SampleRow)
        assert all(row.ok for row in out), [row.failure for row in out if not row.ok]
        wrote = changed(plans, out) - EVERY_STAGE_MAY
        assert wrote and wrote <= set(spec.cls.writes), (spec.cls.__name__, wrote)
        plans = out
