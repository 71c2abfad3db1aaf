"""`build` on a real Ray cluster: a two-node cluster joined with `--ray-address`, and `ray job submit`.

Both start their own Ray on this machine, on free ports and under a private temp folder (so the
"current cluster" file that a plain `ray.init()` reads is never this test's), and take it down again
on success and on failure, without `ray stop` (which would stop every Ray on the machine).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from filters.audit import validate_dataset
from manifests import io

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent  # `ray` and `layerflow-data` of this environment
BUILD_OPTIONS = ["--frames", "4", "--size", "32x48", "--clip", "none"]  # = the `small_config` fixture, no CLIP
# what `tiny_source` yields (test_build.py)
TINY_SOURCE_SAMPLES = {"video_copy_paste": 4, "image_frozen": 2, "video_decomposed": 2}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def layerflow_data(*args: str, timeout: float = 240) -> str:
    """`layerflow-data ARGS` as typed in a shell (a process of its own, so a hang cannot outlive the timeout)."""
    command = [str(VENV_BIN / "layerflow-data"), *args]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"layerflow-data {' '.join(args)} did not finish in {timeout:.0f} s:\n"
                             f"{_text(exc.stdout)[-4000:]}\n{_text(exc.stderr)[-4000:]}") from None
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"layerflow-data {' '.join(args)} exited with {result.returncode}:\n{output[-6000:]}"
    return output


def _text(data: bytes | str | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else data or ""


def media_digests(root: Path) -> dict[str, str]:
    media = root / "media"
    return {path.relative_to(media).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(media.rglob("*")) if path.is_file()}


def manifest_rows(root: Path) -> list[dict]:
    # The manifest has no timing or host columns (manifests/schema.py): every column must agree.
    return io.read_manifest(root).sort_by("sample_id").to_pylist()


def wait_for(condition, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@contextmanager
def private_ray_tmpdir() -> Iterator[str]:
    # Short (Unix socket paths under it must stay below ~107 bytes) and private to this test.
    folder = tempfile.mkdtemp(prefix="lfray-", dir="/tmp")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- a: two nodes, joined with --ray-address -----------------------------------------------------------------------


def run_chain_nodes(dashboard: str) -> dict[str, int]:
    """Node id -> number of the build's stage tasks (`MapBatches(run_chain)`) that ran there (Ray's state API)."""
    from ray.util.state import list_tasks

    tasks = list_tasks(address=dashboard, filters=[("type", "=", "NORMAL_TASK")], limit=10_000, timeout=30,
                       raise_on_missing_output=False)
    nodes: dict[str, int] = {}
    for task in tasks:
        if "run_chain" in task.name and task.state == "FINISHED" and task.node_id:
            nodes[task.node_id] = nodes.get(task.node_id, 0) + 1
    return nodes


@pytest.mark.slow
def test_build_on_a_two_node_cluster_matches_a_single_process_build(tiny_source, tmp_path, monkeypatch):
    from ray.cluster_utils import Cluster

    layerflow_data("build", "--source", str(tiny_source), "--out", str(tmp_path / "plain"), *BUILD_OPTIONS, "--no-ray")
    with private_ray_tmpdir() as ray_tmp:
        monkeypatch.setenv("RAY_TMPDIR", ray_tmp)  # Ray's session folder and its "current cluster" file go here
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        dashboard_port = free_port()
        cluster = Cluster()
        try:
            # Two nodes of one CPU each: the build's two concurrent stage tasks can only run on both of them.
            head = cluster.add_node(num_cpus=1, include_dashboard=True, dashboard_host="127.0.0.1",
                                    dashboard_port=dashboard_port, dashboard_agent_listen_port=free_port())
            worker = cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes(timeout=60)
            layerflow_data("build", "--source", str(tiny_source), "--out", str(tmp_path / "cluster"), *BUILD_OPTIONS,
                           "--ray-address", cluster.address)

            # Which node ran each stage task: task events reach the state API about a second after the task ends.
            dashboard = f"http://127.0.0.1:{dashboard_port}"
            expected = {head.node_id, worker.node_id}
            nodes = {}

            def both_nodes_seen() -> bool:
                nodes.update(run_chain_nodes(dashboard))
                return expected <= set(nodes)

            try:
                wait_for(both_nodes_seen, 30, "stage tasks on both nodes")
            except AssertionError as exc:
                raise AssertionError(f"{exc}: stage tasks per node {nodes}, head {head.node_id}, "
                                     f"worker {worker.node_id}") from None
            assert set(nodes) == expected, nodes
        finally:
            cluster.shutdown()

    summary = json.loads((tmp_path / "cluster" / "_summary.json").read_text())
    assert summary["runner"] == "ray"
    cluster_rows, plain_rows = manifest_rows(tmp_path / "cluster"), manifest_rows(tmp_path / "plain")
    assert [row["sample_id"] for row in cluster_rows] == [row["sample_id"] for row in plain_rows]
    assert len(cluster_rows) == sum(TINY_SOURCE_SAMPLES.values())
    for cluster_row, plain_row in zip(cluster_rows, plain_rows):
        assert cluster_row == plain_row, cluster_row["sample_id"]
    digests = media_digests(tmp_path / "cluster")
    decomposed = sum(row["kind"] == "video_decomposed" for row in cluster_rows)
    # foreground, alpha, background, blended; and a decomposed sample's mask of the invented plate
    assert decomposed and len(digests) == 4 * len(cluster_rows) + decomposed
    assert digests == media_digests(tmp_path / "plain")
    assert validate_dataset(tmp_path / "cluster").ok


@pytest.mark.slow
def test_each_node_fetches_the_pinned_model_once_into_its_own_cache(tiny_source, tmp_path, monkeypatch):
    """A learned captioner named on a two-node cluster whose nodes keep separate caches: the driver resolves the pin
    (one download), each node that captions fetches the same files once into its own cache and checks the hash."""
    from fake_models import tiny_blip
    from hub_server import HubServer, point_hub_at

    spec = "hf:HuggingFaceTB/SmolVLM-256M-Instruct"
    with HubServer() as hub, private_ray_tmpdir() as ray_tmp:
        commit = hub.add_repo(spec[3:], tiny_blip(tmp_path / "blip"))
        point_hub_at(monkeypatch, hub.endpoint, tmp_path / "driver" / "hf")
        monkeypatch.setenv("LAYERFLOW_CACHE_DIR", str(tmp_path / "driver" / "cache"))
        monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        from ray.cluster_utils import Cluster

        caches = {name: tmp_path / name for name in ("head", "worker")}
        cluster = Cluster()
        try:
            for root in caches.values():
                cluster.add_node(num_cpus=1, env_vars={"LAYERFLOW_CACHE_DIR": str(root / "cache"),
                                                       "HF_HOME": str(root / "hf"),
                                                       "HF_HUB_CACHE": str(root / "hf" / "hub")})
            cluster.wait_for_nodes(timeout=60)
            layerflow_data("build", "--source", str(tiny_source), "--out", str(tmp_path / "ds"), *BUILD_OPTIONS,
                           "--captioner", spec, "--ray-address", cluster.address)
        finally:
            cluster.shutdown()
        gets = [path for method, path in hub.requests if method == "GET" and path.endswith("model.safetensors")]

    driver_pin = json.loads((tmp_path / "driver" / "cache" / "models.lock.json").read_text())[spec]
    assert driver_pin["revision"] == commit
    fetched_on = [name for name, root in caches.items() if (root / "cache" / "models.lock.json").is_file()]
    assert fetched_on, "no node loaded the captioner"
    for name in fetched_on:
        node_pin = json.loads((caches[name] / "cache" / "models.lock.json").read_text())[spec]
        assert (node_pin["revision"], node_pin["sha256"]) == (commit, driver_pin["sha256"]), name
    assert len(gets) == 1 + len(fetched_on), gets  # the driver once, each node that captioned once
    rows = manifest_rows(tmp_path / "ds")
    assert {row["captioner"] for row in rows} == {f"{spec}@{commit}"}


# --- b: ray job submit ---------------------------------------------------------------------------------------------


class HeadNode:
    """`ray start --head --block` in its own process group, with token authentication and a private temp folder."""

    def __init__(self, temp_dir: str) -> None:
        self.temp_dir = temp_dir
        self.dashboard = f"http://127.0.0.1:{free_port()}"
        self.token = secrets.token_hex(32)
        # What a user's shell would hold: the virtualenv's scripts on PATH (the job's driver runs `layerflow-data`
        # from it), and this cluster's token (Ray turns token auth on by itself once ~/.ray/auth_token exists, so
        # the test chooses its own rather than depending on that file).
        self.env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "RAY_TMPDIR")}
        self.env.update(PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", RAY_AUTH_MODE="token",
                        RAY_AUTH_TOKEN=self.token)
        self.env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"  # on SIGTERM, stop at once (default: drain 30 s)
        self.log = Path(temp_dir) / "head.log"
        command = [
            str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
            "--port", str(free_port()), "--dashboard-host", "127.0.0.1",
            "--dashboard-port", self.dashboard.rsplit(":", 1)[1], "--include-dashboard", "true", "--num-cpus", "2",
            "--temp-dir", temp_dir, "--ray-client-server-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()), "--disable-usage-stats",
        ]
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)

    def get(self, path: str) -> dict | None:
        request = urllib.request.Request(self.dashboard + path, headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def wait_until_ready(self, timeout: float) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"`ray start` exited with {self.process.returncode}:\n{self.log_tail()}")
            return self.get("/api/version") is not None

        try:
            wait_for(ready, timeout, f"the job server at {self.dashboard}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self) -> None:
        """SIGTERM the whole process group (`ray start --block` stops its processes), then SIGKILL what is left."""
        group = self.process.pid
        for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and _group_alive(group):
                time.sleep(0.2)
                self.process.poll()  # reap the leader so the group can empty
            if not _group_alive(group):
                break
        self.process.wait(timeout=10)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.mark.slow
def test_build_submitted_as_a_ray_job(tiny_source, tmp_path):
    out = tmp_path / "ds"
    submission_id = f"layerflow-build-{secrets.token_hex(4)}"
    with private_ray_tmpdir() as ray_tmp:
        head = HeadNode(ray_tmp)
        try:
            head.wait_until_ready(timeout=90)
            # What a user types in their checkout: ship it as the working dir (Ray skips .git and what .gitignore
            # lists; about 1 MB) so the job and its tasks import this code, and run the entry point on the cluster.
            # The job's cwd is the unpacked copy, so the paths are absolute (on a real cluster: storage every node
            # can reach). The driver finds the cluster through RAY_ADDRESS, which the job server sets.
            command = [
                str(VENV_BIN / "ray"), "job", "submit", "--address", head.dashboard, "--submission-id", submission_id,
                "--working-dir", ".", "--",
                "layerflow-data", "build", "--source", str(tiny_source), "--out", str(out), *BUILD_OPTIONS,
            ]
            try:
                submitted = subprocess.run(command, env=head.env, cwd=REPO, capture_output=True, text=True,
                                           timeout=240, stdin=subprocess.DEVNULL)
                submit_code, cli_output = submitted.returncode, submitted.stdout[-4000:] + submitted.stderr[-4000:]
            except subprocess.TimeoutExpired as exc:
                submit_code, cli_output = None, f"`ray job submit` did not return in {exc.timeout:.0f} s"
            job = head.get(f"/api/jobs/{submission_id}") or {}
            logs = (head.get(f"/api/jobs/{submission_id}/logs") or {}).get("logs", "")
            context = (f"job {job.get('status')}: {job.get('message')}\n--- job logs ---\n{logs[-6000:]}\n"
                       f"--- ray job submit ---\n{cli_output}\n--- head ---\n{head.log_tail(2000)}")
            assert job.get("status") == "SUCCEEDED", context
            assert submit_code == 0, context
            # The job's own driver joined this cluster (a driver that started a Ray of its own would not be listed)
            assert (job.get("driver_info") or {}).get("id"), context
        finally:
            head.stop()
        assert not _group_alive(head.process.pid), "Ray processes of the test's head node are still running"

    report = validate_dataset(out)
    assert report.ok, report.problems
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["runner"] == "ray"
    assert summary["samples"]["by_kind"] == TINY_SOURCE_SAMPLES
    assert io.read_manifest(out).num_rows == sum(TINY_SOURCE_SAMPLES.values())
