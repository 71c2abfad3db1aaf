"""The fake hub (tests/hub_server.py) against the real clients: huggingface_hub, transformers, open_clip, urllib and
a subprocess, all pointed at it the way product tests will be (`point_hub_at`); nothing leaves 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import fake_models
import numpy as np
import pytest
from hub_server import HubServer, SilentServer, point_hub_at
from huggingface_hub import HfApi, constants, hf_hub_download, model_info, snapshot_download
from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

REPO = "layerflow-test/tiny"
FILES = {"config.json": b'{"model_type": "bert"}', "weights/model.safetensors": b"\x01" * 4096,
         "notes.txt": b"not wanted"}


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[HubServer]:
    """A fresh fake hub holding REPO, with this process pointed at it and an empty HF_HOME."""
    with HubServer() as server:
        server.add_repo(REPO, dict(FILES))
        point_hub_at(monkeypatch, server.endpoint, tmp_path / "hf")
        yield server


@pytest.fixture(scope="module")
def blip_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return fake_models.tiny_blip(tmp_path_factory.mktemp("blip"))


def gets(server: HubServer, path: str) -> int:
    return server.requests.count(("GET", path))


def test_download_then_a_cached_file_is_not_fetched_again(hub: HubServer, tmp_path: Path) -> None:
    path = Path(hf_hub_download(REPO, "config.json"))
    assert path.read_bytes() == FILES["config.json"]
    assert path.is_relative_to(tmp_path / "hf" / "hub")  # HF_HOME, not the real ~/.cache
    assert gets(hub, f"/{REPO}/resolve/main/config.json") == 1

    hub.clear()
    assert Path(hf_hub_download(REPO, "config.json")) == path
    assert gets(hub, f"/{REPO}/resolve/main/config.json") == 0  # a HEAD to check the commit, no GET
    commit = model_info(REPO).sha
    hub.clear()
    assert Path(hf_hub_download(REPO, "config.json", revision=commit)) == path
    assert hub.requests == []  # pinned to a commit and cached: not even a HEAD


def test_snapshot_download_fetches_only_the_allowed_files(hub: HubServer) -> None:
    folder = Path(snapshot_download(REPO, revision="main", allow_patterns=["*.json", "weights/*"]))
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "config.json", "weights/model.safetensors"]
    assert (folder / "weights" / "model.safetensors").read_bytes() == FILES["weights/model.safetensors"]
    assert not any("notes.txt" in path for _, path in hub.requests)
    info = HfApi().model_info(REPO)
    assert folder.name == info.sha
    assert {(s.rfilename, s.size) for s in info.siblings or []} == {(name, len(data)) for name, data in FILES.items()}
    weights = next(s for s in info.siblings or [] if s.rfilename.endswith(".safetensors"))
    sha256 = hashlib.sha256(FILES["weights/model.safetensors"]).hexdigest()
    assert weights.lfs is not None and weights.lfs.sha256 == sha256  # listed as an LFS file, as the hub does


def test_missing_file_repo_and_revision_are_the_hubs_errors(hub: HubServer) -> None:
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(REPO, "absent.json")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("layerflow-test/absent", "config.json")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="v9")
    assert not HfApi().file_exists(REPO, "absent.json") and not HfApi().repo_exists("layerflow-test/absent")


def test_replaced_file_and_new_commit_reach_a_fresh_download(hub: HubServer, tmp_path: Path) -> None:
    first = Path(hf_hub_download(REPO, "config.json"))
    commit = model_info(REPO).sha
    hub.replace_file(REPO, "config.json", b'{"tampered": true}')
    fresh = Path(hf_hub_download(REPO, "config.json", cache_dir=tmp_path / "fresh"))
    assert fresh.read_bytes() == b'{"tampered": true}' and fresh.parent.name == commit  # same commit, other bytes
    assert first.read_bytes() == FILES["config.json"]

    new_commit = hub.add_repo(REPO, {"config.json": b"{}"})
    assert new_commit != commit and model_info(REPO).sha == new_commit
    assert Path(hf_hub_download(REPO, "config.json")).read_bytes() == b"{}"  # main moved
    old = hf_hub_download(REPO, "weights/model.safetensors", revision=commit, cache_dir=tmp_path / "old")
    assert Path(old).read_bytes() == FILES["weights/model.safetensors"]  # the old commit is still served


def test_transformers_loads_tiny_blip_by_repo_id(hub: HubServer, blip_files: dict[str, Path]) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    hub.add_repo("layerflow-test/tiny-blip", blip_files)
    assert AutoConfig.from_pretrained("layerflow-test/tiny-blip").model_type == "blip"
    processor = AutoProcessor.from_pretrained("layerflow-test/tiny-blip")
    model = AutoModelForImageTextToText.from_pretrained("layerflow-test/tiny-blip")
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        tokens = model.generate(**processor(images=image, return_tensors="pt"), max_new_tokens=4)
    assert tokens.shape[0] == 1 and tokens.shape[1] >= 1
    prefix = "/layerflow-test/tiny-blip/resolve/"  # then the revision: transformers pins `main` to its commit first
    fetched = {path[len(prefix):].split("/", 1)[1] for method, path in hub.requests
               if method == "GET" and path.startswith(prefix)}
    assert "model.safetensors" in fetched and fetched <= set(blip_files)  # optional files were probed, not fetched


def test_open_clip_downloads_the_tiny_model_from_the_hub(hub: HubServer, tmp_path: Path) -> None:
    import open_clip.pretrained

    files = fake_models.tiny_open_clip(tmp_path / "clip")
    hub.add_repo("layerflow-test/tiny-clip", files)
    path = open_clip.pretrained.download_pretrained_from_hf("layerflow-test/tiny-clip")
    assert Path(path).read_bytes() == files["open_clip_pytorch_model.bin"].read_bytes()
    # open_clip asks for the safetensors twin first; the hub's 404 sends it to the .bin
    assert ("HEAD", "/layerflow-test/tiny-clip/resolve/main/open_clip_model.safetensors") in hub.requests


def test_plain_url_is_served_and_replaced(hub: HubServer, tmp_path: Path) -> None:
    onnx = fake_models.tiny_rembg_onnx(tmp_path / "u2net.onnx")["u2net.onnx"]
    url = hub.add_url("/danielgatis/rembg/releases/download/v0.0.0/u2net.onnx", onnx)
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == onnx.read_bytes()
        assert int(response.headers["Content-Length"]) == onnx.stat().st_size
    hub.replace_url("/danielgatis/rembg/releases/download/v0.0.0/u2net.onnx", b"corrupt")
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=10) as response:
        assert response.headers["Content-Length"] == "7"
    with pytest.raises(urllib.error.HTTPError, match="404"):
        urllib.request.urlopen(hub.endpoint + "/no/such/file", timeout=10)


def test_a_subprocess_reaches_the_hub_through_the_environment_alone(hub: HubServer, tmp_path: Path) -> None:
    code = "import sys; from huggingface_hub import hf_hub_download; print(hf_hub_download(sys.argv[1], sys.argv[2]))"
    result = subprocess.run([sys.executable, "-c", code, REPO, "config.json"], env=os.environ.copy(),
                            capture_output=True, text=True, timeout=60, check=True)
    path = Path(result.stdout.strip().splitlines()[-1])
    assert path.is_relative_to(tmp_path / "hf" / "hub") and path.read_bytes() == FILES["config.json"]
    assert ("GET", f"/{REPO}/resolve/main/config.json") in hub.requests


def test_point_hub_at_is_undone_with_the_monkeypatch(tmp_path: Path) -> None:
    before = (constants.ENDPOINT, constants.HF_HUB_CACHE, os.environ.get("HF_ENDPOINT"))
    with HubServer() as server, pytest.MonkeyPatch.context() as patch:
        point_hub_at(patch, server.endpoint, tmp_path / "hf")
        patched = (constants.ENDPOINT, constants.HF_HUB_CACHE)
        assert patched == (server.endpoint, str(tmp_path / "hf" / "hub"))
        assert not constants.HF_HUB_OFFLINE and os.environ["HF_HOME"] == str(tmp_path / "hf")
    assert (constants.ENDPOINT, constants.HF_HUB_CACHE, os.environ.get("HF_ENDPOINT")) == before


def test_silent_server_accepts_and_never_answers() -> None:
    with SilentServer() as silent:
        with pytest.raises(TimeoutError):
            urllib.request.urlopen(silent.endpoint, timeout=0.5)
        for _ in range(100):  # the accept may trail the client's connect a little
            if silent.connections:
                break
            time.sleep(0.01)
        assert silent.connections == 1
        address = urlsplit(silent.endpoint)
        held = socket.create_connection((address.hostname, address.port), timeout=5)
    held.close()  # the server closed with this connection still open, and did not wait for it
