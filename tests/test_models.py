"""The model registry and its one fetch path, against a stand-in hub on 127.0.0.1 (tests/hub_server.py) serving tiny
random-initialised models built from configs: first use downloads and locks, a second use makes no request, a
corrupted file is refused, an unreachable hub costs one bounded probe, and no product path runs random weights."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import subprocess
import sys
import urllib.request
from dataclasses import replace
from fnmatch import fnmatch
from pathlib import Path

import pytest
from fake_models import tiny_blip, tiny_rembg_onnx, tiny_sam2_checkpoint
from hub_server import HubServer, SilentServer, point_hub_at

from datagen import matting
from datagen.build import BuildJob, build_dataset
from datagen.captioning import HfCaptioner, load_captioner
from datagen.config import BuildConfig
from datagen.matting import known_specs, load_matting
from datagen.matting.sam2_backend import Sam2Matting
from datagen.preflight import WEIGHT_FREE, choose_models
from filters.clip import resolve_clip
from filters.report import write_report
from manifests import io, models
from manifests.errors import ConfigError
from manifests.models import REGISTRY, Access, Group, ModelUnavailable, ensure, read_lock

SMALL = ("++model.image_size=128",)  # the real hiera-t network at 128 px input: its weights do not depend on it
CLI = [sys.executable, "-m", "cli"]


class SmallSam2(Sam2Matting):
    hydra_overrides: tuple[str, ...] = SMALL


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A stand-in hub and release-file server, with empty caches pointed at by HF_HOME and LAYERFLOW_CACHE_DIR."""
    with HubServer() as server:
        point_hub_at(monkeypatch, server.endpoint, tmp_path / "hf")
        monkeypatch.setenv("LAYERFLOW_CACHE_DIR", str(tmp_path / "cache"))
        monkeypatch.setenv(models.REMBG_URL_ENV, server.endpoint + "/rembg")
        yield server


def serve_rembg(server: HubServer, monkeypatch: pytest.MonkeyPatch, folder: Path, name: str, seed: int = 0) -> Path:
    """Serve a tiny network as rembg's release file of `name`; the registry's md5 becomes the tiny file's (the real
    md5 is rembg's, of the real file)."""
    entry = REGISTRY[f"rembg:{name}"]
    path = next(iter(tiny_rembg_onnx(folder / entry.source.remote_name, seed=seed).values()))
    server.add_url(f"/rembg/{entry.source.remote_name}", path)
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    monkeypatch.setitem(REGISTRY, entry.spec, replace(entry, source=replace(entry.source, md5=md5)))
    return path


@pytest.fixture(scope="module")
def sam2_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return next(iter(tiny_sam2_checkpoint(tmp_path_factory.mktemp("sam2") / "sam2.1_hiera_tiny.pt").values()))


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- the registry is what its sources say ---------------------------------------------------------------------

def test_sam2_entries_are_sam2s_own_hub_repos_and_files():
    from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES

    ours = {entry.source.repo: (entry.spec, entry.source.files) for entry in REGISTRY.values()
            if entry.spec.startswith("sam2:")}
    assert set(ours) == set(HF_MODEL_ID_TO_FILENAMES)
    for repo, (config, filename) in HF_MODEL_ID_TO_FILENAMES.items():
        assert ours[repo] == (f"sam2:{Path(config).stem}", (filename,))


def test_rembg_entries_carry_rembgs_own_urls_and_md5_sums():
    from rembg.sessions import sessions

    for entry in (entry for entry in REGISTRY.values() if entry.spec.startswith("rembg:")):
        code = inspect.getsource(sessions[entry.spec.partition(":")[2]].download_models)
        assert f"/{entry.source.remote_name}\"" in code and f"md5:{entry.source.md5}" in code
        assert entry.source.filename == f"{entry.spec.partition(':')[2]}.onnx"  # where rembg keeps it


def test_clip_entries_are_open_clips_hub_repos():
    import open_clip

    for entry in (entry for entry in REGISTRY.values() if entry.group is Group.CLIP):
        _, arch, tag = entry.spec.split(":")
        assert open_clip.get_pretrained_cfg(arch, tag)["hf_hub"] == f"{entry.source.repo}/"


def test_a_plus_combines_backends_but_not_inside_a_config_name():
    assert models.split_combined("rembg:birefnet-general+sam2:sam2.1_hiera_b+") == [
        "rembg:birefnet-general", "sam2:sam2.1_hiera_b+"]
    assert models.split_combined("rembg+sam2") == ["rembg", "sam2"]
    assert models.split_combined("sam2:sam2_hiera_b+:/w/ckpt.pt") == ["sam2:sam2_hiera_b+:/w/ckpt.pt"]


def test_defaults_are_registry_models_and_nothing_is_pinned_that_was_not_read():
    for group, by_device in models.DEFAULTS.items():
        for spec in by_device.values():
            assert all(REGISTRY[part].group is group for part in models.split_combined(spec))
    assert all(getattr(entry.source, "revision", None) is None and entry.size_bytes is None
               for entry in REGISTRY.values())  # revisions and sizes come from the fetch, into the lock file


# --- first use, second use, corruption -------------------------------------------------------------------------

@pytest.mark.slow
def test_sam2_without_a_checkpoint_fetches_the_official_one_once_and_pins_it(hub, sam2_checkpoint):
    commit = hub.add_repo("facebook/sam2.1-hiera-tiny", {"sam2.1_hiera_tiny.pt": sam2_checkpoint})
    backend = SmallSam2(model="sam2.1_hiera_t", device="cpu", access=Access())
    assert backend.info.weights_sha256 == sha256(sam2_checkpoint) and backend.info.revision == commit
    assert not backend.info.random_weights and backend.info.name == "sam2:sam2.1_hiera_t"
    assert ("GET", "/facebook/sam2.1-hiera-tiny/resolve/main/sam2.1_hiera_tiny.pt") in hub.requests
    locked = read_lock()["sam2:sam2.1_hiera_t"]
    assert locked["revision"] == commit and locked["sha256"] == sha256(sam2_checkpoint)

    hub.clear()
    again = SmallSam2(model="sam2.1_hiera_t", device="cpu", access=Access())
    assert hub.requests == [] and again.info == backend.info  # cached and pinned: no request at all


def test_a_second_fetch_asks_for_the_locked_revision_not_main(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    first = hub.add_repo("HuggingFaceTB/SmolVLM-256M-Instruct", tiny_blip(tmp_path / "blip"))
    fetched = ensure("hf:HuggingFaceTB/SmolVLM-256M-Instruct", Access())
    assert fetched.pin.revision == first and (fetched.path / "config.json").is_file()
    hub.add_repo("HuggingFaceTB/SmolVLM-256M-Instruct", {"config.json": b"{}"})  # main moves on upstream
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "other-hub"))  # another machine, the same lock
    again = ensure("hf:HuggingFaceTB/SmolVLM-256M-Instruct", Access())
    assert again.pin == fetched.pin  # the lock's commit, not main's
    assert all(first in path or "/api/" in path for _, path in hub.requests if "resolve" in path)


def test_a_corrupted_cached_file_is_refused(hub, tmp_path, monkeypatch):
    serve_rembg(hub, monkeypatch, tmp_path / "srv", "u2netp")
    fetched = ensure("rembg:u2netp", Access())
    assert read_lock()["rembg:u2netp"]["sha256"] == fetched.pin.sha256 == sha256(fetched.path)
    fetched.path.write_bytes(fetched.path.read_bytes()[:-1] + b"\0")
    with pytest.raises(ModelUnavailable, match="rembg:u2netp.*pins .*corrupted or replaced") as error:
        ensure("rembg:u2netp", Access())
    assert "\n" not in str(error.value)
    assert [spec for spec, _ in models.verify()] == ["rembg:u2netp"]


def test_a_corrupted_download_is_refused_and_not_kept(hub, tmp_path, monkeypatch):
    serve_rembg(hub, monkeypatch, tmp_path / "srv", "u2netp")
    hub.replace_url(f"/rembg/{REGISTRY['rembg:u2netp'].source.remote_name}", b"not the published file")
    with pytest.raises(ModelUnavailable, match="md5"):
        ensure("rembg:u2netp", Access())
    assert models.locate("rembg:u2netp") is None and "rembg:u2netp" not in read_lock()


@pytest.mark.slow
def test_a_hub_file_that_differs_from_the_lock_is_refused(hub, tmp_path, sam2_checkpoint, monkeypatch):
    from huggingface_hub import constants

    hub.add_repo("facebook/sam2.1-hiera-tiny", {"sam2.1_hiera_tiny.pt": sam2_checkpoint})
    ensure("sam2:sam2.1_hiera_t", Access())
    hub.replace_file("facebook/sam2.1-hiera-tiny", "sam2.1_hiera_tiny.pt", b"tampered")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "fresh-hub"))  # the same lock, an empty cache
    with pytest.raises(ModelUnavailable, match="lock file pins"):
        ensure("sam2:sam2.1_hiera_t", Access())


# --- what a build runs --------------------------------------------------------------------------------------------

@pytest.fixture
def registry_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """`auto` on a CPU: rembg's u2netp (the tiny network fits its 320 px preprocessing) and the registry's CPU
    captioner (served as a tiny BLIP); CLIP is left out (its real architecture is 600 MB of random weights)."""
    monkeypatch.setitem(models.DEFAULTS, Group.MATTING, {"cpu": "rembg:u2netp", "cuda": "rembg:u2netp"})


@pytest.mark.slow
def test_a_real_source_build_fetches_the_defaults_once_and_the_model_captions_reach_the_manifest(
        hub, registry_defaults, tiny_source, tmp_path, monkeypatch):
    onnx = serve_rembg(hub, monkeypatch, tmp_path / "srv", "u2netp")
    commit = hub.add_repo("HuggingFaceTB/SmolVLM-256M-Instruct", tiny_blip(tmp_path / "blip"))
    config = BuildConfig(frames=4, size=(64, 64), clip="none", device="cpu")
    summary = build_dataset(BuildJob(str(tmp_path / "ds"), str(tiny_source), config, no_ray=True), log=print)

    stages = summary["backends"]["models"]
    assert stages["matting"]["runs"] == "rembg:u2netp" and stages["captioner"]["runs"] == \
        "hf:HuggingFaceTB/SmolVLM-256M-Instruct"
    rows = io.read_manifest(tmp_path / "ds").to_pylist()
    videos = [row for row in rows if row["kind"] == "video_copy_paste"]
    assert videos and {row["matting_backend"] for row in videos} == {"rembg:u2netp"}
    assert {row["matting_weights_sha256"] for row in videos} == {sha256(onnx)}
    assert {row["captioner"] for row in rows} == {f"hf:HuggingFaceTB/SmolVLM-256M-Instruct@{commit}"}
    from test_captioning_hf import WORDS

    captions = [row[f"caption_{layer}"] for row in rows for layer in ("foreground", "background", "blended")]
    assert any(captions) and all(c is None or set(c.split()) <= set(WORDS) for c in captions)  # the model's words
    record = json.loads((tmp_path / "ds" / "_build.json").read_text())
    assert record["models"]["matting"]["pins"][0]["sha256"] == sha256(onnx)
    html = write_report(tmp_path / "ds").read_text()
    assert "captioner model" in html and "hf:HuggingFaceTB/SmolVLM-256M-Instruct" in html and "randomly" not in html

    hub.clear()
    build_dataset(BuildJob(str(tmp_path / "ds2"), str(tiny_source), config, no_ray=True), log=print)
    assert hub.requests == []  # everything cached and locked: not one request


def test_resuming_with_other_weights_is_refused(hub, registry_defaults, tiny_source, tmp_path, monkeypatch):
    serve_rembg(hub, monkeypatch, tmp_path / "srv", "u2netp")
    config = BuildConfig(frames=4, size=(64, 64), clip="none", captioner="sidecar", device="cpu")
    build_dataset(BuildJob(str(tmp_path / "ds"), str(tiny_source), config, no_ray=True), log=print)
    fetched = models.locate("rembg:u2netp")
    serve_rembg(hub, monkeypatch, tmp_path / "srv2", "u2netp", seed=1)  # other weights under the same name
    fetched.unlink()
    (models.lock_path()).unlink()
    with pytest.raises(ConfigError, match="holds a build of something else.*models"):
        build_dataset(BuildJob(str(tmp_path / "ds"), str(tiny_source), config, no_ray=True), log=print)


def test_an_unreachable_hub_costs_one_probe_of_at_most_3_s_then_the_weight_free_path(monkeypatch, tmp_path):
    timeouts = []
    real_urlopen = urllib.request.urlopen

    def recording(request, *args, timeout=None, **kwargs):
        timeouts.append(timeout)
        return real_urlopen(request, *args, timeout=timeout, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", recording)
    with SilentServer() as silent:
        point_hub_at(monkeypatch, silent.endpoint, tmp_path / "hf")
        monkeypatch.setenv("LAYERFLOW_CACHE_DIR", str(tmp_path / "cache"))
        chosen = choose_models(BuildConfig(device="cpu"), learned_defaults=True)
        assert silent.connections == 1 and len(timeouts) == 1 and timeouts[0] <= 3
    assert models.PROBE_TIMEOUT_S <= 3
    stages = chosen.stages
    assert stages["matting"]["runs"] == WEIGHT_FREE and stages["captioner"]["runs"] == "sidecar"
    assert "did not answer within 3 s" in stages["matting"]["why"] and stages["clip"]["runs"] == ""
    assert chosen.config.access.offline and chosen.config.captioner == "sidecar"


def test_offline_flag_and_hf_hub_offline_make_no_probe(monkeypatch):
    monkeypatch.setattr(models, "probe", lambda *a, **k: pytest.fail("probed"))
    monkeypatch.setattr("datagen.preflight.probe", lambda *a, **k: pytest.fail("probed"))
    chosen = choose_models(BuildConfig(device="cpu", offline=True), learned_defaults=True)
    assert "--offline" in chosen.stages["captioner"]["why"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    chosen = choose_models(BuildConfig(device="cpu"), learned_defaults=True)
    assert "HF_HUB_OFFLINE" in chosen.stages["matting"]["why"]


def test_the_demo_never_fetches_and_keeps_its_sample_ids(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr("datagen.preflight.probe", lambda *a, **k: pytest.fail("the demo probed the network"))
    chosen = choose_models(BuildConfig(), learned_defaults=False)
    assert chosen.config.captioner == "sidecar" and chosen.stages["matting"]["runs"] == WEIGHT_FREE
    assert chosen.config.fingerprint() == replace(BuildConfig(), captioner="sidecar").fingerprint()


# --- no random weights in a product path -----------------------------------------------------------------------

def every_spec() -> list[tuple[str, str]]:
    """Every spec the CLI's --matting, --captioner and --clip accept, as an option would name it."""
    matting_specs = [spec for spec in known_specs().split(", ") if "<" not in spec]
    matting_specs += [spec for spec in REGISTRY if spec.startswith(("rembg:", "sam2:"))]
    matting_specs += ["rembg+sam2", "rembg:isnet-general-use+sam2:sam2.1_hiera_b+", "sam2:sam2.1_hiera_t:random"]
    captioners = ["auto", "sidecar", "none", *[spec for spec in REGISTRY if spec.startswith("hf:")]]
    clips = ["auto", "none", *[spec for spec in REGISTRY if spec.startswith("openclip:")]]
    return ([("matting", spec) for spec in matting_specs] + [("captioner", spec) for spec in captioners]
            + [("clip", spec) for spec in clips])


@pytest.mark.slow
@pytest.mark.parametrize(("option", "spec"), every_spec())
def test_no_spec_builds_a_learned_backend_with_random_weights_unless_it_says_so(option, spec, monkeypatch):
    """With empty caches and no network, every spec either loads without weights by design (weight-free backends),
    or stops with one line; SAM 2 is built without a checkpoint only under the `:random` spelling."""
    built = []
    monkeypatch.setattr(Sam2Matting, "_build", lambda self, config, checkpoint, device: built.append(checkpoint))
    try:
        if option == "matting":
            backend = load_matting(spec, "cpu")
            info = getattr(backend, "info", None)
            if info is not None:  # a learned backend: hashed weights, or random ones under the spelling only
                assert bool(info.weights_sha256) != info.random_weights and info.random_weights == (":random" in spec)
        elif option == "captioner":
            captioner = load_captioner(spec, "cpu")
            assert not isinstance(captioner, HfCaptioner)  # nothing cached: no learned captioner loads
        else:
            choice = resolve_clip(spec)
            assert choice.weights is None and (spec == "none" or "not in the local cache" in choice.unavailable)
    except (ConfigError, ModelUnavailable) as exc:
        assert "\n" not in str(exc)
        if option != "matting" or "tflite" not in spec:
            assert "layerflow-data models fetch" in str(exc) or "checkpoint" in str(exc) or "path" in str(exc)
    assert all(checkpoint is None for checkpoint in built) == spec.endswith(":random") or not built


# --- the command line, as a user runs it -------------------------------------------------------------------------

def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env}, cwd=Path(__file__).parents[1])


@pytest.mark.slow
def test_a_named_sam2_offline_with_an_empty_cache_is_one_line_naming_models_fetch(tiny_source, tmp_path):
    result = run_cli("build", "--source", str(tiny_source), "--out", str(tmp_path / "ds"), "--matting",
                     "sam2:sam2.1_hiera_t", "--no-ray",
                     env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty"), "HF_HUB_CACHE": "",
                          "LAYERFLOW_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "layerflow-data models fetch sam2:sam2.1_hiera_t" in errors[0]
    assert not (tmp_path / "ds" / "manifest").exists()


def test_models_list_runs_offline_and_says_what_is_cached(tmp_path):
    result = run_cli("models", "list", "--json", env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
                                                    "LAYERFLOW_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert {row["group"] for row in rows} == {"matting", "captioning", "clip"}
    assert {row["spec"] for row in rows} == set(REGISTRY)
    assert all(row["cached"] is None and row["revision"] in (None, "file") for row in rows)
    table = run_cli("models", "list", env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
                                           "LAYERFLOW_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "160"})
    assert re.search(r"sam2:sam2\.1_hiera_t .*unpinned.*not cached", table.stdout)


def test_models_fetch_then_list_and_verify(hub, tmp_path, monkeypatch):
    serve_rembg(hub, monkeypatch, tmp_path / "srv", "u2netp")
    fetched = models.fetch_specs(models.wanted_specs(["rembg:u2netp"], False, "cpu"))
    row = next(row for row in models.listing() if row["spec"] == "rembg:u2netp")
    assert row["cached"] == str(fetched[0].path) and row["sha256"] == sha256(fetched[0].path)
    assert row["size_bytes"] == fetched[0].path.stat().st_size and models.verify() == []
    with pytest.raises(ConfigError, match="not in the model registry"):
        models.fetch_specs(["rembg:not-a-model"])


def test_auto_matting_uses_what_the_driver_chose(monkeypatch):
    access = Access(chosen=((Group.MATTING, ""),))
    backend = matting.load_matting("auto", "cpu", access)
    assert backend.learned is None  # the driver chose the weight-free path: nothing is looked up


@pytest.mark.slow
def test_workers_on_one_node_fetch_each_file_once(hub, tmp_path):
    """Three processes sharing a node's cache (a cluster node's workers) load the model the driver pinned, at once:
    each file crosses the network once, and each process checks the driver's hash."""
    served = tiny_blip(tmp_path / "blip")
    commit = hub.add_repo("HuggingFaceTB/SmolVLM-256M-Instruct", served)
    wanted = {name: {"sha256": sha256(path)} for name, path in served.items()
              if any(fnmatch(name, pattern) for pattern in models.MODEL_FOLDER_PATTERNS)}
    pin = models.Pin("hf:HuggingFaceTB/SmolVLM-256M-Instruct", commit, models.files_digest(wanted))
    code = ("import sys; from manifests.models import Access, Pin, ensure; pin = Pin(*sys.argv[1:]); "
            "assert ensure(pin.spec, Access(pins=(pin,))).pin == pin")
    workers = [subprocess.Popen([sys.executable, "-c", code, pin.spec, pin.revision, pin.sha256], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).parents[1])
               for _ in range(3)]
    errors = [worker.communicate(timeout=120)[1] for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), errors
    gets = [path for method, path in hub.requests if method == "GET" and path.endswith("model.safetensors")]
    assert len(gets) == 1, hub.requests
