"""Safe inputs: weights files never run code, manifest paths never leave the dataset, no shell, and the local Ray
refuses clients without its token."""

from __future__ import annotations

import ast
import logging
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from filters.audit import validate_dataset
from manifests import io
from manifests.errors import ConfigError
from manifests.schema import MANIFEST_DIR, SAMPLE_SCHEMA

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ["cli.py", "datagen", "filters", "layerflow_model", "manifests"]


class RunsCode:
    """Unpickling this creates a folder: proof that a loader executed code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


@pytest.fixture
def evil_weights(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    torch.save({"model": RunsCode(marker), "state_dict": RunsCode(marker)}, path)
    return path, marker


def test_clip_weights_that_carry_code_are_refused_and_scores_are_null(evil_weights, tmp_path):
    from datagen.stages import ClipStage

    path, marker = evil_weights
    stage = ClipStage(str(tmp_path), "ViT-B-32", str(path), None, None, device="cpu")
    assert stage.scorer is None and "did not load" in stage.unavailable
    assert not marker.exists()


@pytest.mark.slow
def test_sam2_checkpoints_that_carry_code_are_refused(evil_weights):
    from datagen.matting import load_matting

    path, marker = evil_weights
    with pytest.raises(ConfigError, match="does not load"):
        load_matting(f"sam2:sam2.1_hiera_t:{path}", device="cpu")
    assert not marker.exists()


def test_optimizer_state_that_carries_code_is_refused(evil_weights):
    path, marker = evil_weights  # the trainer reads optimizer.pt exactly like this (layerflow_model/train.py)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path, map_location="cpu", weights_only=True)
    assert not marker.exists()
    source = (REPO / "layerflow_model" / "train.py").read_text()
    assert "torch.load(" in source and all("weights_only=True" in line for line in source.splitlines()
                                           if "torch.load(" in line)


def test_every_torch_load_in_the_product_is_weights_only():
    for path in product_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load" and \
                    getattr(node.func.value, "id", None) == "torch":
                flags = {kw.arg: getattr(kw.value, "value", None) for kw in node.keywords}
                assert flags.get("weights_only") is True, f"{path}:{node.lineno}"


def test_no_shell_is_ever_run_from_the_product():
    for path in product_files():
        tree = ast.parse(path.read_text(), str(path))
        names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)
                 for alias in node.names} | {getattr(node, "module", None) for node in ast.walk(tree)}
        assert "subprocess" not in names, path
        calls = {f"{getattr(n.func.value, 'id', '')}.{n.func.attr}" for n in ast.walk(tree)
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
        assert not calls & {"os.system", "os.popen", "os.execv", "os.execvp", "os.spawnv"}, path


def product_files() -> list[Path]:
    files = []
    for name in PRODUCT:
        path = REPO / name
        files += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return files


@pytest.mark.parametrize("bad", ["/etc/passwd", "../../outside.mkv", "media/../../../x.mkv"])
def test_manifest_paths_that_leave_the_dataset_are_refused_on_read(tiny_source, small_config, tmp_path, bad):
    from dataclasses import replace

    from datagen.build import build
    from datagen.pipeline import LocalRunner
    from layerflow_model.data import ClipStore, read_rows

    out = tmp_path / "ds"
    build(str(tiny_source), out, replace(small_config, clip="none"), LocalRunner(progress=False))
    part = sorted((out / MANIFEST_DIR).glob("part-*.parquet"))[0]
    rows = pq.read_table(part, schema=SAMPLE_SCHEMA).to_pylist()
    rows[0]["uri_alpha"] = bad
    io.write_parquet_atomic(io.to_table(rows, SAMPLE_SCHEMA), part)

    report = validate_dataset(out)
    assert not report.ok and any("not a relative path inside the dataset" in p for p in report.problems)
    row = next(r for r in read_rows(str(out), None) if r.sample_id == rows[0]["sample_id"])
    with pytest.raises(io.DatasetError, match="not a relative path inside the dataset"):
        ClipStore(str(out), 16, 16).layers(row)


def test_turning_ray_auth_off_is_warned_about(monkeypatch, caplog):
    from datagen.ray_runner import require_token_auth

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with caplog.at_level(logging.WARNING):
        require_token_auth()
    assert "without authentication" in caplog.text


@pytest.mark.slow
def test_the_local_ray_refuses_a_client_without_its_token(monkeypatch, tmp_path):
    import ray

    from datagen.ray_runner import RayRunner

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    runner = RayRunner(num_cpus=1, progress=False)
    try:
        assert os.environ["RAY_AUTH_MODE"] == "token"  # Ray turned its token auth on for the cluster it started
        address = ray.get_runtime_context().gcs_address
        env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
        env["HOME"] = str(tmp_path)  # a client that does not have the token
        probe = f"import ray; ray.init(address={address!r}); print('JOINED')"
        done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    finally:
        runner.close()
    assert done.returncode != 0 and "JOINED" not in done.stdout
    assert "Authentication token is missing or incorrect" in done.stderr
