"""Crashes: a build killed with SIGKILL at random points and restarted, a Ray worker killed mid-stage, and a poison
row that kills its worker. Each ends with every sample exactly once, as an uninterrupted build makes them."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
from conftest import write_video

from datagen.build import build
from datagen.pipeline import LocalRunner
from datagen.resume import WORK_DIR
from manifests import io
from manifests.schema import MANIFEST_DIR, SUMMARY_FILE

CLI = [sys.executable, "-c", "import cli; cli.main()", "build"]
OPTIONS = ["--frames", "4", "--size", "32x48", "--clip", "none", "--seed", "3"]


@pytest.fixture
def source(tiny_source: Path) -> Path:
    """The tiny source and four more foreground videos: 14 samples, enough commits to kill between."""
    for seed in range(4):
        write_video(tiny_source / "more" / f"fg_{seed}.mp4", seed=10 + seed)
    return tiny_source


def dataset_state(out: Path) -> dict:
    """Everything a build wrote that must not depend on interruptions: each manifest row with a hash of its media,
    the failures and the input states (sorted), and the summary's counts."""
    rows = {}
    for row in io.read_manifest(out).to_pylist():
        media = {column: hashlib.sha256((out / row[column]).read_bytes()).hexdigest()
                 for column in row if column.startswith("uri_")}
        rows[row["sample_id"]] = {**row, "media": media}
    summary = io.read_summary(out)
    return {
        "rows": rows,
        "count": io.read_manifest(out).num_rows,  # duplicates would show here, not in the dict
        "failures": sorted(json.dumps(r, sort_keys=True) for r in io.read_failures(out).to_pylist()),
        "inputs": sorted(json.dumps(r, sort_keys=True) for r in io.read_inputs(out).to_pylist()),
        "summary": {key: summary[key] for key in ("inputs", "samples", "reject_reasons", "failures", "unscored")},
    }


def progress(out: Path) -> tuple[int, int]:
    """(inputs committed, manifest parts committed) so far."""
    inputs = len(list((out / WORK_DIR / "inputs").glob("*.json")))
    return inputs, len(list((out / MANIFEST_DIR).glob("part-*.parquet")))


def run_until(source: Path, out: Path, stop_at: tuple[str, int] | None) -> str:
    """Run the build in a subprocess; SIGKILL it as soon as `stop_at` (`inputs`/`parts`, count) is reached."""
    process = subprocess.Popen([*CLI, "--source", str(source), "--out", str(out), "--no-ray", *OPTIONS],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if stop_at is not None:
            inputs, parts = progress(out)
            if (inputs if stop_at[0] == "inputs" else parts) >= stop_at[1]:
                process.send_signal(signal.SIGKILL)
                process.wait()
                return "killed"
        time.sleep(0.005)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 0, output
    return "finished"


@pytest.mark.slow
def test_sigkill_at_random_points_then_rerun_gives_the_uninterrupted_dataset(source, tmp_path):
    assert run_until(source, tmp_path / "whole", None) == "finished"
    expected = dataset_state(tmp_path / "whole")
    inputs, samples = len(expected["inputs"]), len(expected["rows"])

    rng = random.Random(2026)
    stops = [("inputs", rng.randint(1, inputs - 1)), ("parts", rng.randint(1, samples // 2)),
             ("parts", rng.randint(samples // 2 + 1, samples - 1))]
    out = tmp_path / "killed"
    for stop_at in stops:
        assert run_until(source, out, stop_at) == "killed", stop_at
        assert not (out / SUMMARY_FILE).exists()  # it died mid-build
    assert run_until(source, out, None) == "finished"

    state = dataset_state(out)
    assert state["count"] == samples  # no sample twice
    assert state == expected
    assert io.read_summary(out)["resumed"]["samples_committed_before"] == stops[-1][1]


@pytest.mark.slow
def test_a_rerun_after_a_kill_skips_what_was_committed(source, tmp_path, small_config, monkeypatch):
    out = tmp_path / "ds"
    assert run_until(source, out, ("parts", 5)) == "killed"
    _, parts = progress(out)
    made = []
    original = io.write_manifest_part
    monkeypatch.setattr(io, "write_manifest_part", lambda root, rows: made.extend(rows) or original(root, rows))
    summary = build(str(source), out, _config(small_config), LocalRunner(progress=False))
    assert summary["resumed"]["samples_committed_before"] == parts >= 5
    assert len(made) == summary["samples"]["total"] - parts  # only the rest was made


def _config(small_config):
    from dataclasses import replace

    return replace(small_config, clip="none", seed=3)


@pytest.mark.slow
def test_killing_a_ray_worker_mid_stage_loses_and_duplicates_nothing(source, tmp_path, small_config):
    from datagen.ray_runner import RayRunner

    config = _config(small_config)
    build(str(source), tmp_path / "plain", config, LocalRunner(progress=False))
    runner = RayRunner(num_cpus=2, progress=False)
    killed: list[int] = []

    def kill_a_worker() -> None:  # the first Ray worker seen running one of our stages
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            for process in psutil.process_iter(["pid", "cmdline"]):
                if "ray::run_chain" in " ".join(process.info["cmdline"] or []):  # the task's process title
                    process.send_signal(signal.SIGKILL)
                    killed.append(process.info["pid"])
                    return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_a_worker, daemon=True)
    killer.start()
    try:
        build(str(source), tmp_path / "ray", config, runner)
    finally:
        runner.close()
    killer.join(timeout=5)
    assert killed, "no worker was found running a stage"
    assert dataset_state(tmp_path / "ray") == dataset_state(tmp_path / "plain")


POISON = """
import json, os, signal, sys, time
from pathlib import Path

import ray

from datagen.ray_runner import RayRunner
from datagen.rows import InputRow, encode, from_batch, to_batch
from datagen.runner import StageSpec
from datagen.scheduling import StageName
from datagen.sources import SourceItem
from manifests.layers import InputKind


class CrashOnPoison:  # shipped by value; a crash, not an exception: the worker process dies
    def __init__(self, attempts: str) -> None:
        self.attempts = attempts

    def __call__(self, batch):
        rows = from_batch(batch, InputRow)
        for row in rows:
            if row.key == "poison":  # the file says whether the row ran with others (its phase's task) or alone
                Path(self.attempts, f"{len(rows)}-{os.getpid()}-{time.monotonic_ns()}").touch()
                os.kill(os.getpid(), signal.SIGSEGV)
            row.source_frames = 1  # done
        return to_batch(rows)


import datagen.ray_runner

# poison first: the first task holds it and rows 0 and 1 (three rows a task: 13 rows, at most 3 tasks a CPU), so its
# tries with others tell from its own
datagen.ray_runner.TASKS_PER_CPU = 3
keys = ["poison", *map(str, range(12))]
rows = [InputRow.discovered(SourceItem(key, f"/data/{key}.mp4", InputKind.VIDEO)) for key in keys]
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
try:
    stages = [StageSpec(StageName.DECODE, CrashOnPoison, {"attempts": sys.argv[1]})]
    out = [row for batch in RayRunner(progress=False).run(rows, stages, "decode") for row in batch]
finally:
    ray.shutdown()
print(json.dumps([json.loads(encode(row)) for row in out]))
"""


@pytest.mark.slow
def test_a_row_that_crashes_its_worker_is_tried_a_bounded_number_of_times_then_failed(tmp_path):
    """In an interpreter of its own: nothing another test left behind (a Ray session, environment variables, Ray
    Data's process-wide context, memory) can change how often Ray retries."""
    from datagen.ray_runner import ATTEMPTS

    attempts = tmp_path / "attempts"
    attempts.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    done = subprocess.run([sys.executable, "-c", POISON, str(attempts)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(row["item"]["input_id"] for row in out) == sorted(["poison", *map(str, range(12))])  # each once
    rows = {row["item"]["input_id"]: row for row in out}
    assert all(rows[str(i)]["status"] == "ok" and rows[str(i)]["source_frames"] == 1 for i in range(12))
    poison = rows["poison"]["failure"]
    assert rows["poison"]["status"] == "failed" and poison["stage"] == "decode"
    assert f"worker process died {ATTEMPTS} times" in poison["message"] and "\n" not in poison["message"]
    tries = Counter(path.name.split("-")[0] for path in attempts.iterdir())
    # The task holding the poison is tried ATTEMPTS times (never endless retries); then its rows run one per task,
    # and the poison, alone, is tried exactly ATTEMPTS times before it becomes a failure row
    assert tries["3"] == ATTEMPTS
    assert tries["1"] == ATTEMPTS
    assert set(tries) == {"1", "3"}
