"""GPU scheduling: which stages become GPU actor pools, with what share of a GPU, and what cannot be served.

The plan is plain Python and tested directly. The Ray tests start a local Ray that declares one GPU (Ray's GPUs are
logical resources, so this machine can schedule against one it does not have): they show fractional actors really
share it, and that a build puts its learned stages on GPU actors while each backend reports the device it really got.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest
from test_captioning_hf import offline, tiny_blip  # noqa: F401  (fixtures: the tiny BLIP, no hub access)
from test_matting_rembg import export, no_downloads  # noqa: F401  (fixture: rembg cannot download)

from datagen.build import build
from datagen.config import BuildConfig
from datagen.pipeline import LocalRunner
from datagen.rows import InputRow, from_batch, to_batch
from datagen.runner import StageSpec
from datagen.scheduling import GPU_ACTOR_CPUS, Resources, StageName, StagePlan, plan_stages
from datagen.sources import SourceItem
from manifests import io
from manifests.errors import ConfigError
from manifests.layers import InputKind

CPU_STAGES = (StageName.DECODE, StageName.COMPOSE, StageName.SCORE)
ALL_LEARNED = {StageName.MATTE, StageName.CAPTION, StageName.CLIP}


def plan(cluster_gpus: float | None = 2.0, cpus: float = 16.0, device: str = "auto", learned=ALL_LEARNED,
         **resources):
    return plan_stages(BuildConfig(device=device), Resources(**resources), set(learned), cluster_gpus, cpus)


def test_without_gpus_learned_stages_are_cpu_tasks_told_cpu():
    plans = plan(cluster_gpus=0.0)
    for stage in ALL_LEARNED:
        # `auto` would let a worker pick up a GPU Ray never reserved for it: the plan says cpu
        assert plans[stage] == StagePlan(concurrency=1, device="cpu")
    for stage in CPU_STAGES:
        assert plans[stage] == StagePlan(concurrency=2)


def test_gpu_stages_of_one_phase_split_the_gpus_and_cpu_stages_stay_tasks():
    plans = plan(cluster_gpus=2.0)
    assert plans[StageName.MATTE] == StagePlan(2, actor=True, num_gpus=1.0, num_cpus=GPU_ACTOR_CPUS, device="auto")
    # caption and clip run at the same time: one GPU each
    assert plans[StageName.CAPTION] == StagePlan(1, actor=True, num_gpus=1.0, num_cpus=GPU_ACTOR_CPUS, device="auto")
    assert plans[StageName.CLIP] == plans[StageName.CAPTION]
    assert all(not plans[stage].actor and plans[stage].num_gpus == 0 for stage in CPU_STAGES)


def test_one_gpu_is_shared_fractionally_by_the_stages_that_run_together():
    plans = plan(cluster_gpus=1.0)
    assert (plans[StageName.CAPTION].num_gpus, plans[StageName.CLIP].num_gpus) == (0.5, 0.5)
    assert plans[StageName.MATTE].num_gpus == 1.0  # alone in its phase


def test_a_fractional_share_sets_how_many_actors_fit():
    plans = plan(cluster_gpus=2.0, gpus_per_actor={StageName.MATTE: 0.25, StageName.CLIP: 0.25})
    assert (plans[StageName.MATTE].concurrency, plans[StageName.MATTE].num_gpus) == (8, 0.25)
    assert (plans[StageName.CLIP].concurrency, plans[StageName.CLIP].num_gpus) == (4, 0.25)  # its half of 2 GPUs


def test_per_stage_concurrency_overrides_the_default():
    plans = plan(cluster_gpus=0.0, concurrency=3, stage_concurrency={StageName.DECODE: 5, StageName.CAPTION: 2})
    assert plans[StageName.DECODE].concurrency == 5
    assert plans[StageName.COMPOSE].concurrency == 3
    assert plans[StageName.CAPTION].concurrency == 2


def test_only_learned_stages_get_gpus():
    plans = plan(cluster_gpus=1.0, learned={StageName.CLIP})
    assert plans[StageName.CLIP].num_gpus == 1.0  # the captioner (sidecar) needs none, so CLIP gets the GPU
    assert not plans[StageName.MATTE].actor and not plans[StageName.CAPTION].actor


@pytest.mark.parametrize(("cluster_gpus", "cpus", "device", "resources", "message"), [
    (1.0, 16.0, "auto", {"gpus": 2.0}, r"--gpus 2: the Ray cluster has 1 GPU\(s\)"),
    (0.0, 16.0, "cuda", {}, r"--device cuda: no GPU for the learned stages \(caption, clip, matte\)"),
    (4.0, 16.0, "cuda", {"gpus": 0.0}, r"--device cuda: .* and --gpus is 0"),
    (1.0, 16.0, "cpu", {"gpus": 1.0}, "--gpus 1 with --device cpu"),
    (1.0, 16.0, "auto", {"stage_concurrency": {StageName.MATTE: 3}},
     r"ask for 3 GPUs \(matte 3 x 1\) but --gpus gives 1"),
    (1.0, 2.0, "auto", {"stage_concurrency": {StageName.CLIP: 2}, "gpus_per_actor": {StageName.CLIP: 0.25}},
     r"hold 1.5 of the cluster's 2 CPUs"),
    (None, 2.0, "auto", {"gpus": 1.0}, "with --no-ray the stages run in this process"),
])
def test_requests_the_cluster_cannot_serve_are_one_line_errors(cluster_gpus, cpus, device, resources, message):
    with pytest.raises(ConfigError, match=message) as error:
        plan(cluster_gpus, cpus, device, **resources)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("resources", "message"), [
    ({"gpus": -1}, "--gpus must be >= 0"),
    ({"stage_concurrency": {StageName.SCORE: 0}}, "--concurrency score=0: must be >= 1"),
    ({"gpus_per_actor": {StageName.DECODE: 0.5}}, "--gpus-per-actor decode=0.5: decode is a CPU stage"),
    ({"gpus_per_actor": {StageName.MATTE: 1.5}}, "a fraction in \\(0, 1\\] or a whole number"),
])
def test_malformed_requests_are_refused(resources, message):
    with pytest.raises(ConfigError, match=message):
        Resources(**resources)


# --- on Ray, with one declared GPU ------------------------------------------------------------------------------


@pytest.fixture
def ray_with_one_gpu():
    import ray

    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_fractional_gpu_actors_share_one_gpu_and_cpu_tasks_get_none(ray_with_one_gpu, tmp_path):
    from datagen.ray_runner import RayRunner

    class Probe:  # defined here so Ray ships it by value; records which process ran a row and what GPU it was given
        def __init__(self, key: str, started: str | None = None) -> None:
            self.key, self.started = key, started
            if started:  # an actor: say it started, and let its first batch wait (60 s at most) for the second one
                (Path(started) / str(os.getpid())).touch()

        def __call__(self, batch):
            deadline = time.monotonic() + 60
            while self.started and len(os.listdir(self.started)) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            rows = from_batch(batch, InputRow)
            for row in rows:  # recorded in the row's devices: (pid, CUDA_VISIBLE_DEVICES, actors started)
                row.devices[self.key] = json.dumps([os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES"),
                                                    len(os.listdir(self.started)) if self.started else None])
            return to_batch(rows)

    started = tmp_path / "started"
    started.mkdir()
    stages = [StageSpec(StageName.DECODE, Probe, {"key": "cpu"}, concurrency=2),
              StageSpec(StageName.MATTE, Probe, {"key": "gpu", "started": str(started)}, concurrency=2,
                        num_cpus=0.5, num_gpus=0.5, actor=True)]
    rows = [InputRow.discovered(SourceItem(str(i), f"/data/{i}.mp4", InputKind.VIDEO)) for i in range(16)]
    out = [row for batch in RayRunner(progress=False).run(rows, stages, "probe") for row in batch]
    assert sorted(row.key for row in out) == sorted(row.key for row in rows)
    seen = [{key: json.loads(value) for key, value in row.devices.items()} for row in out]
    assert {row["gpu"][1] for row in seen} == {"0"}  # every actor holds a share of GPU 0 ...
    assert {row["gpu"][2] for row in seen} == {2}  # ... and both were up at once: two halves of one GPU
    assert {row["cpu"][1] for row in seen} <= {None, ""}  # a CPU task is given no GPU


def thread_probe() -> type:
    """A stage that records, in each row, the process that ran it and the threads torch and OpenCV had there
    (defined in a function so that Ray ships it by value)."""

    class ThreadProbe:
        def __init__(self, delay: float = 0.0) -> None:
            self.delay = delay

        def __call__(self, batch):
            import cv2
            import torch

            time.sleep(self.delay)
            rows = from_batch(batch, InputRow)
            for row in rows:
                row.devices["probe"] = json.dumps([os.getpid(), cv2.getNumThreads(), torch.get_num_threads()])
            return to_batch(rows)

    return ThreadProbe


@pytest.mark.slow
def test_a_cpu_phase_runs_one_row_a_task_on_both_workers_with_one_thread_each(ray_with_one_gpu):
    """A phase of CPU stages only runs as Ray core tasks: each stage copy uses the one CPU its task holds (no
    OpenCV or torch thread per core), and small phases go one row a task, so both workers share the rows."""
    from datagen.ray_runner import RayRunner

    rows = [InputRow.discovered(SourceItem(str(i), f"/data/{i}.mp4", InputKind.VIDEO)) for i in range(12)]
    stages = [StageSpec(StageName.DECODE, thread_probe(), {"delay": 0.2}, concurrency=2)]
    batches = list(RayRunner(progress=False).run(rows, stages, "probe"))
    assert [len(batch) for batch in batches] == [8, 4]  # handed back 8 at a time: a manifest part is not one row
    seen = [json.loads(row.devices["probe"]) for batch in batches for row in batch]
    assert {(cv, torch_threads) for _, cv, torch_threads in seen} == {(1, 1)}
    assert len({pid for pid, _, _ in seen}) == 2


def test_the_local_runner_sets_the_threads_it_is_given():
    rows = [InputRow.discovered(SourceItem("0", "/data/0.mp4", InputKind.VIDEO))]
    stages = [StageSpec(StageName.DECODE, thread_probe())]
    import cv2
    import torch

    before = cv2.getNumThreads(), torch.get_num_threads()
    try:
        out = [row for batch in LocalRunner(progress=False, threads=1).run(rows, stages, "probe") for row in batch]
        assert json.loads(out[0].devices["probe"])[1:] == [1, 1]
    finally:
        cv2.setNumThreads(before[0])
        torch.set_num_threads(before[1])


def test_rows_per_task_is_one_until_a_phase_is_large():
    from datagen.ray_runner import MAX_ROWS_PER_TASK, TASKS_PER_CPU, rows_per_task

    assert rows_per_task(54, 2) == 1 and rows_per_task(TASKS_PER_CPU * 2, 2) == 1
    assert rows_per_task(TASKS_PER_CPU * 2 + 1, 2) == 2
    assert rows_per_task(1_000_000, 2) == MAX_ROWS_PER_TASK


@pytest.mark.slow
def test_build_runs_learned_stages_as_gpu_actors_and_reports_the_real_device(
        ray_with_one_gpu, tiny_source, small_config, tiny_blip, tmp_path):  # noqa: F811
    from datagen.ray_runner import RayRunner

    onnx = export(tmp_path / "tiny_rembg.onnx")
    config = replace(small_config, matting=f"rembg:{onnx}", captioner=f"hf:{tiny_blip}", clip="none")
    runner = RayRunner(progress=False)
    assert runner.gpus == 1.0
    summary = build(str(tiny_source), tmp_path / "ray", config, runner)

    scheduling = summary["scheduling"]
    assert scheduling["matte"] == {"concurrency": 1, "actor": True, "num_gpus": 1.0, "num_cpus": GPU_ACTOR_CPUS,
                                   "device": "auto"}
    assert scheduling["caption"]["actor"] and scheduling["caption"]["num_gpus"] == 1.0  # alone in its phase
    assert not scheduling["decode"]["actor"] and scheduling["decode"]["num_gpus"] == 0
    # Ray's GPU here is only declared: torch and onnxruntime see none, and the backends say so (never "cuda")
    devices = summary["backends"]["devices"]
    assert set(devices) == {"matte", "caption"} and all(set(d) == {"cpu"} for d in devices.values())
    assert sum(devices["caption"].values()) == summary["samples"]["total"]
    inputs = io.read_inputs(tmp_path / "ray").to_pylist()
    assert {row["matting_device"] for row in inputs if row["matting_backend"] == "rembg:tiny_rembg.onnx"} == {"cpu"}

    plain = build(str(tiny_source), tmp_path / "plain", replace(config, device="cpu"), LocalRunner(progress=False))
    assert plain["scheduling"]["matte"]["device"] == "cpu"  # --device cpu: the plain runner's plan says so
    ray_rows = io.read_manifest(tmp_path / "ray").sort_by("sample_id").to_pylist()
    plain_rows = io.read_manifest(tmp_path / "plain").sort_by("sample_id").to_pylist()
    assert [r["sample_id"] for r in ray_rows] == [r["sample_id"] for r in plain_rows]
    assert [r["caption_blended"] for r in ray_rows] == [r["caption_blended"] for r in plain_rows]


def test_no_ray_with_gpus_is_refused_before_any_work(tiny_source, small_config, tmp_path):
    with pytest.raises(ConfigError, match="with --no-ray"):
        build(str(tiny_source), tmp_path / "ds", small_config, LocalRunner(progress=False),
              resources=Resources(gpus=1))
    assert not (tmp_path / "ds").exists()


def test_per_stage_options_are_repeatable_key_value_pairs_and_a_bare_number_sets_every_cpu_stage():
    resources = Resources.from_options(2.0, ["4", "decode=6,matte=1", "clip=2"], ["matte=0.5", "clip=0.25"])
    assert resources == Resources(gpus=2.0, concurrency=4, gpus_per_actor={StageName.MATTE: 0.5, StageName.CLIP: 0.25},
                                  stage_concurrency={StageName.DECODE: 6, StageName.MATTE: 1, StageName.CLIP: 2})
    assert Resources.from_options() == Resources()


@pytest.mark.parametrize(("concurrency", "shares", "message"), [
    (["decod=2"], [], "--concurrency 'decod=2': no stage 'decod'; the stages are decode, matte"),
    (["decode=two"], [], "'two' is not a whole number"),
    ([], ["0.5"], "--gpus-per-actor 0.5: name the stage, e.g. matte=0.5"),
    ([], ["compose=0.5"], "compose is a CPU stage"),
])
def test_bad_per_stage_options_are_one_line(concurrency, shares, message):
    with pytest.raises(ConfigError, match=message) as error:
        Resources.from_options(None, concurrency, shares)
    assert "\n" not in str(error.value)


def test_cli_takes_per_stage_settings_and_refuses_bad_ones_in_one_line(monkeypatch, capsys, tiny_source, tmp_path):
    from test_cli import run_main

    code, output = run_main(monkeypatch, capsys, "build", "--source", str(tiny_source), "--out", str(tmp_path / "a"),
                            "--no-ray", "--gpus", "1", "--clip", "none")
    assert code == 2 and "with --no-ray" in output.strip().splitlines()[-1] and "Traceback" not in output
    code, output = run_main(monkeypatch, capsys, "build", "--source", str(tiny_source), "--out", str(tmp_path / "b"),
                            "--no-ray", "--gpus-per-actor", "decode=0.5")
    assert code == 2 and "decode is a CPU stage" in output.strip().splitlines()[-1] and "Traceback" not in output
    code, output = run_main(monkeypatch, capsys, "build", "--source", str(tiny_source), "--out", str(tmp_path / "c"),
                            "--no-ray", "--clip", "none", "--size", "32x48", "--frames", "4",
                            "--concurrency", "compose=3", "--concurrency", "caption=1")
    assert code == 0, output
    summary = io.read_summary(tmp_path / "c")
    assert summary["scheduling"]["compose"]["concurrency"] == 3 and summary["scheduling"]["decode"]["concurrency"] == 2


def test_a_worker_keeps_its_last_chains_only():
    """A driver that builds again and again (a notebook) must not pile up stage chains, each with its models and
    caches, in its long-lived Ray workers."""
    import cv2
    import torch

    from datagen import ray_runner

    rows = to_batch([InputRow.discovered(SourceItem("0", "/data/0.mp4", InputKind.VIDEO))])
    specs = [[StageSpec(StageName.DECODE, thread_probe(), {"delay": index / 1000})] for index in range(6)]
    threads = cv2.getNumThreads(), torch.get_num_threads()  # a chain sets them (one CPU): this process's to restore
    ray_runner._CHAINS.clear()
    try:
        for chain in specs:
            ray_runner.run_chain(rows, chain)
        assert list(ray_runner._CHAINS) == [repr(chain) for chain in specs[-ray_runner.KEPT_CHAINS:]]
    finally:
        ray_runner._CHAINS.clear()
        cv2.setNumThreads(threads[0])
        torch.set_num_threads(threads[1])
