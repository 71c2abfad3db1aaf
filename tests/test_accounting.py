"""Every discovered input ends in exactly one state with a reason, even when a stage refuses it or nothing at all
can be made; a setup error stops the build at once with one line on both runners; and the version floors."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tomllib
from conftest import texture, write_video
from PIL import Image
from test_cli import run_main

from datagen.build import build
from datagen.config import BuildConfig
from datagen.pipeline import LocalRunner
from datagen.rows import InputRow
from datagen.runner import StageSpec
from datagen.scheduling import StageName
from datagen.sources import SourceItem
from manifests import io
from manifests.errors import LayerflowError, StageSetupError
from manifests.layers import InputKind
from manifests.video_io import write_rgb_video

REPO = Path(__file__).resolve().parents[1]


def run(source: Path, out: Path, config: BuildConfig, **kwargs) -> dict:
    return build(str(source), out, config, LocalRunner(progress=False), **kwargs)


def write_pan(path: Path) -> Path:
    """A panning camera over a texture: most of the frame moves, so bgsub refuses to matte it."""
    scene = texture(64, 400, 7)
    write_rgb_video(path, np.stack([scene[:, 4 * t: 4 * t + 96] for t in range(24)]), 24.0)
    return path


def assert_accounted(out: Path) -> tuple[dict[str, dict], list[dict]]:
    """Every input in one state; every failed one named by a failure row; the summary adds up. Returns both tables."""
    inputs = {row["uri"]: row for row in io.read_inputs(out).to_pylist()}
    failures = io.read_failures(out).to_pylist()
    summary = io.read_summary(out)
    assert summary["inputs"]["discovered"] == summary["inputs"]["accounted"] == len(inputs)
    named = Counter(row["input_id"] for row in failures)
    for row in inputs.values():
        if row["state"] == "failed":
            assert named[row["input_id"]] >= 1, f"{row['uri']} is failed but no failure row names it"
            assert row["message"]
    assert summary["failures"]["total"] == len(failures)
    assert sum(summary["failures"]["by_stage"].values()) == len(failures)
    return inputs, failures


def test_an_input_refused_at_the_matte_stage_has_its_failure_row(tmp_path, small_config):
    source = tmp_path / "src"
    write_video(source / "static.mp4", seed=1)
    write_pan(source / "pan.mp4")
    (source / "pan.json").write_text(json.dumps({"role": "foreground"}))  # so it cannot serve as a background
    out = tmp_path / "ds"
    run(source, out, small_config)
    inputs, failures = assert_accounted(out)
    pan = inputs[str(source / "pan.mp4")]
    assert pan["state"] == "failed" and pan["stage"] == "matte" and pan["message"].startswith("bgsub:")
    [row] = [f for f in failures if f["input_id"] == pan["input_id"]]  # exactly one: a failure of the input itself
    assert row["stage"] == "matte" and row["sample_id"] is None and row["message"] == pan["message"]
    assert io.read_summary(out)["failures"]["by_stage"] == {"matte": 1}


def test_validate_names_a_failed_input_without_a_failure_row(tmp_path, small_config):
    from filters.audit import validate_dataset

    source = tmp_path / "src"
    write_video(source / "static.mp4", seed=1)
    write_pan(source / "pan.mp4")
    (source / "pan.json").write_text(json.dumps({"role": "foreground"}))
    out = tmp_path / "ds"
    run(source, out, small_config)  # no sample: `static` has no background, `pan` is a foreground it cannot matte
    assert validate_dataset(out, allow_empty=True).ok
    io.write_failures(out, [])  # as the build wrote it before the fix
    expected = f"input {source / 'pan.mp4'}: failed, but no row of failures.parquet names it"
    assert validate_dataset(out, allow_empty=True).problems == [expected]


def nothing_to_plan(source: Path) -> Path:
    """Plain photos, a text file and a Photoshop document (not read yet): no input can be a foreground."""
    source.mkdir(parents=True)
    for seed in range(3):
        Image.fromarray(texture(40, 40, seed)).save(source / f"photo_{seed}.jpg")
    (source / "notes.txt").write_text("shot list")
    (source / "poster.psd").write_bytes(b"8BPS" + bytes(40))
    return source


def test_a_source_with_nothing_to_plan_completes_empty_with_every_input_accounted(tmp_path, small_config):
    source = nothing_to_plan(tmp_path / "src")
    out = tmp_path / "ds"
    summary = run(source, out, small_config)
    assert summary["samples"]["total"] == 0 and io.read_manifest(out).num_rows == 0
    inputs, failures = assert_accounted(out)
    assert len(inputs) == 5
    states = {Path(uri).name: row["state"] for uri, row in inputs.items()}
    assert states == {"photo_0.jpg": "unused", "photo_1.jpg": "unused", "photo_2.jpg": "unused",
                      "notes.txt": "failed", "poster.psd": "failed"}
    assert all(row["message"] for row in inputs.values() if row["state"] == "unused")  # why it was not used
    why = summary["samples"]["none_because"]
    assert "foreground" in why and "\n" not in why
    assert summary["complete"] is True


def test_the_cli_says_why_nothing_was_made_and_exits_non_zero(monkeypatch, capsys, tmp_path):
    source = nothing_to_plan(tmp_path / "src")
    code, output = run_main(monkeypatch, capsys, "build", "--source", str(source), "--out", str(tmp_path / "ds"),
                            "--no-ray", "--frames", "4", "--size", "32x48", "--clip", "none")
    assert code == 1
    assert "no samples" in output and "foreground" in output and "not a layerflow dataset" not in output
    assert "Traceback" not in output


def test_validate_refuses_an_empty_dataset_unless_allowed(monkeypatch, capsys, tmp_path, small_config):
    from filters.audit import validate_dataset

    out = tmp_path / "ds"
    run(nothing_to_plan(tmp_path / "src"), out, small_config)
    report = validate_dataset(out)
    assert not report.ok and any("no samples" in problem for problem in report.problems)
    assert validate_dataset(out, allow_empty=True).ok
    code, _ = run_main(monkeypatch, capsys, "validate", str(out))
    assert code == 1
    code, _ = run_main(monkeypatch, capsys, "validate", str(out), "--allow-empty")
    assert code == 0


def test_validate_checks_the_sample_counts_it_is_told_to_expect(tiny_source, tmp_path, small_config):
    from filters.audit import validate_dataset

    out = tmp_path / "ds"
    run(tiny_source, out, small_config)
    kinds = Counter(row["kind"] for row in io.read_manifest(out).to_pylist())
    assert validate_dataset(out, min_samples=dict(kinds)).ok
    report = validate_dataset(out, min_samples={"video_copy_paste": kinds["video_copy_paste"] + 1})
    assert report.problems == [f"{kinds['video_copy_paste']} video_copy_paste samples, expected at least "
                               f"{kinds['video_copy_paste'] + 1}"]


def test_a_video_and_its_extracted_frames_are_built_once_the_other_is_a_duplicate(tmp_path, small_config):
    from conftest import moving_disk

    source = tmp_path / "src"
    write_video(source / "clip" / "clip.mp4", seed=1)
    frames, _ = moving_disk(24, 64, 96, seed=1)  # what clip.mp4 holds, as PNG frames beside it
    (source / "clip" / "frames").mkdir()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(source / "clip" / "frames" / f"{i:05d}.png")
    write_video(source / "plate.mp4", seed=3)
    summary = run(source, tmp_path / "ds", small_config)
    inputs = {row["relative_path"]: row for row in io.read_inputs(tmp_path / "ds").to_pylist()}
    video, copy = inputs["clip/clip.mp4"], inputs["clip/frames"]
    assert copy["state"] == "duplicate" and copy["duplicate_of"] == video["input_id"] and copy["stage"] == "decode"
    assert copy["message"].startswith("the same content as clip/clip.mp4") and not copy["sample_ids"]
    assert video["state"] == "used" and video["fingerprint"] and video["group"] == video["fingerprint"]
    assert summary["inputs"]["duplicate"] == 1 and summary["inputs"]["accounted"] == summary["inputs"]["discovered"]
    manifest = io.read_manifest(tmp_path / "ds").to_pylist()
    assert copy["input_id"] not in {r["input_id_foreground"] for r in manifest} | {r["input_id_background"]
                                                                                   for r in manifest}


@pytest.mark.parametrize("runner_name", ["local", "ray"])
def test_a_stage_that_cannot_be_set_up_stops_the_run_with_one_line(runner_name):
    from datagen.runner import make_runner

    class FailsToSetUp:  # shipped to the Ray workers by value; its model cannot load: an ordinary exception
        def __init__(self) -> None:
            raise RuntimeError("weights /models/missing.pt not found\n(and a second line)")

        def __call__(self, batch):
            return batch

    rows = [InputRow.discovered(SourceItem(str(i), f"/data/{i}.mp4", InputKind.VIDEO)) for i in range(5)]
    with make_runner(no_ray=runner_name == "local", num_cpus=2) as runner, \
            pytest.raises(StageSetupError) as caught:
        list(runner.run(rows, [StageSpec(StageName.MATTE, FailsToSetUp)], "decode + matte"))
    assert isinstance(caught.value, LayerflowError)
    assert str(caught.value) == ("the matte stage could not be set up: RuntimeError: weights /models/missing.pt not "
                                 "found")


@pytest.mark.parametrize("no_ray", [True, False])
def test_a_backend_that_cannot_load_on_the_workers_stops_the_build_with_one_line(tmp_path, tiny_source, small_config,
                                                                                no_ray):
    """No pre-check in the driver here (as on a cluster, where only the workers load the model)."""
    from dataclasses import replace

    from datagen.runner import make_runner

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    config = replace(small_config, matting=f"rembg:{broken}", clip="none")
    with make_runner(no_ray=no_ray, num_cpus=2) as runner, pytest.raises(StageSetupError) as caught:
        build(str(tiny_source), tmp_path / "ds", config, runner)
    message = str(caught.value)
    assert message.startswith("the matte stage could not be set up: ") and "broken.onnx" in message
    assert "\n" not in message


def test_the_cli_refuses_a_backend_that_cannot_load_with_one_line(monkeypatch, capsys, tmp_path, tiny_source):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    code, output = run_main(monkeypatch, capsys, "build", "--source", str(tiny_source), "--out", str(tmp_path / "ds"),
                            "--no-ray", "--clip", "none", "--matting", f"rembg:{broken}")
    assert code == 2 and "Traceback" not in output
    [line] = [line for line in output.splitlines() if line.startswith("error:")]
    assert "broken.onnx" in line


def test_version_floors_are_the_versions_the_code_needs():
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = {}
    for requirement in dependencies:
        match = re.match(r"^([A-Za-z0-9_.\[\]-]+?)(?:\[[^\]]*\])?>=([0-9.]+)", requirement)
        if match:
            floors[match.group(1).lower()] = tuple(int(part) for part in match.group(2).split("."))
    assert floors["torch"] >= (2, 6)  # torch.load weights-only by default, in the libraries we call too
    assert floors["torchvision"] >= (0, 21)  # the torchvision built for torch 2.6
    assert floors["transformers"] >= (4, 46)  # AutoModelForImageTextToText, which the hf: captioner loads with
    assert floors["diffusers"] >= (0, 30, 3)  # the patch embedding's use_positional_embeddings (layerflow_model)
