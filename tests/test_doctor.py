"""`doctor` and `--device`: what this machine can run, one actionable line per problem, and no silent CPU runs."""

from __future__ import annotations

import pytest
import torch
from test_cli import run_main

import cli
from datagen.config import BuildConfig
from datagen.doctor import Check, Request, can_run, diagnose
from datagen.scheduling import Resources
from manifests.device import resolve_device
from manifests.errors import ConfigError

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


def test_this_machine_can_run_the_default_build():
    checks = by_name(diagnose(Request(BuildConfig(clip="none"))))
    assert checks["h264 encode"].ok and checks["vp9 alpha (webm)"].ok  # real encodes, read back and compared
    assert checks["matting"].ok and checks["captioner"].ok
    assert checks["ray cpus"].ok
    assert not checks["clip scores"].ok and not checks["clip scores"].required  # off: a warning, not a failure
    assert can_run(list(checks.values()))


@no_gpu
def test_a_gpu_request_without_a_gpu_fails_with_a_fix():
    checks = by_name(diagnose(Request(BuildConfig(clip="none", device="cuda"))))
    assert not checks["torch"].ok and checks["torch"].required
    line = checks["torch"].line()
    assert line.startswith("FAIL") and "--device cpu" in line and "\n" not in line
    assert not can_run(list(checks.values()))


@no_gpu
def test_more_gpus_than_ray_has_is_a_failed_scheduling_check():
    checks = by_name(diagnose(Request(BuildConfig(clip="none"), resources=Resources(gpus=2))))
    check = checks["ray scheduling"]
    assert not check.ok and "--gpus 2: the Ray cluster has 0 GPU(s)" in check.detail
    assert not can_run(list(checks.values()))


def test_a_matting_backend_that_cannot_load_is_a_failed_check(tmp_path):
    checks = by_name(diagnose(Request(BuildConfig(clip="none", matting=f"tflite:{tmp_path / 'missing.tflite'}"),
                                      no_ray=True)))
    assert not checks["matting"].ok and "missing.tflite" in checks["matting"].detail
    assert not can_run(list(checks.values()))


@no_gpu
def test_resolve_device_never_falls_back_silently():
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="--device cuda: no CUDA GPU is visible"):
        resolve_device("cuda")


@no_gpu
def test_build_with_device_cuda_on_a_cpu_machine_is_one_clear_line(monkeypatch, capsys, tmp_path):
    code, output = run_main(monkeypatch, capsys, "build", "--source", str(tmp_path), "--out", str(tmp_path / "o"),
                            "--device", "cuda", "--no-ray")
    assert code == 2
    assert output.strip().count("\n") == 0 and "--device cuda: no CUDA GPU" in output and "Traceback" not in output
    assert not (tmp_path / "o").exists()  # refused before any work


def test_doctor_command_exit_codes(monkeypatch, capsys, tmp_path):
    from typer.testing import CliRunner

    ok = CliRunner().invoke(cli.app, ["doctor", "--clip", "none", "--no-ray"])
    assert ok.exit_code == 0 and "can run here" in ok.output
    bad = CliRunner().invoke(cli.app, ["doctor", "--clip", "none", "--no-ray", "--matting", "magic"])
    assert bad.exit_code == 1 and "FAIL  matting" in bad.output and "unknown matting backend" in bad.output


def test_device_is_not_part_of_the_dataset_fingerprint():
    assert BuildConfig(device="cpu").fingerprint() == BuildConfig(device="cuda").fingerprint()
    with pytest.raises(ConfigError, match="device: one of auto, cpu, cuda"):
        BuildConfig(device="tpu")


def test_an_unreachable_ray_cluster_is_a_failed_check_not_a_hang():
    import socket

    with socket.socket() as probe:  # a port nothing listens on once this socket is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    checks = by_name(diagnose(Request(BuildConfig(clip="none"), ray_address=f"127.0.0.1:{port}")))
    cluster = checks["ray cluster"]
    assert not cluster.ok and cluster.required and f"127.0.0.1:{port}" in cluster.detail
    assert not can_run(list(checks.values()))


def test_the_matting_check_loads_the_backend_on_the_requested_device(tmp_path):
    checks = by_name(diagnose(Request(BuildConfig(clip="none", device="cuda",
                                                  matting=f"tflite:{tmp_path / 'model.tflite'}"), no_ray=True)))
    assert not checks["matting"].ok and "tflite runs on the CPU only" in checks["matting"].detail
