"""The models the learned stages use: one registry, a lock file of what was fetched, and one fetch path.

Every learned loader (rembg, SAM 2, the `hf:` captioner, CLIP) gets its weights through `ensure`, the way
`transformers` and `rembg` do for their users: from the local cache when they are there, else downloaded once (with a
progress bar, to a temporary name, then renamed), verified, and recorded in the lock file. Hub files go through
`huggingface_hub` (its cache, `HF_HOME`, `HF_ENDPOINT` and `HF_HUB_OFFLINE` apply); files published by URL (rembg's
release files) go to `<cache>/models/`. The lock file (`<cache>/models.lock.json`, cache = `$LAYERFLOW_CACHE_DIR`, else
`~/.cache/layerflow-data`) pins each spec to the revision and sha256 first fetched: later fetches ask for that
revision and refuse a file whose hash differs, and `layerflow-data models verify` recomputes them all.

Nothing here invents a pin: a revision, size or hash in `REGISTRY` is one read from the model's source (rembg's md5
sums are those in rembg's own session code); the rest is null until `fetch` reads it from the files it got.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import urllib.request
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from manifests.errors import ConfigError, LayerflowError, one_line
from manifests.io import write_json_atomic
from manifests.storage import cache_root

LOCK_NAME = "models.lock.json"
PROBE_TIMEOUT_S = 3.0  # the one reachability probe of a build waits at most this long
REMBG_URL_ENV = "LAYERFLOW_REMBG_URL"  # where rembg's release files are fetched from (a mirror, or a test server)
REMBG_URL = "https://github.com/danielgatis/rembg/releases/download/v0.0.0"  # rembg 2.0.86's sessions
RANDOM_SUFFIX = ":random"  # `sam2:sam2.1_hiera_t:random`: random initialisation, for tests and benchmarks only
FETCH_HINT = "layerflow-data models fetch"
# The files of a transformers model folder (weights, configs, tokenizer, processor, chat template); not the
# duplicate .bin / .onnx / .gguf exports many repos also carry.
MODEL_FOLDER_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken")


class Group(str, Enum):
    """What a model is for: the option that takes its spec."""

    MATTING = "matting"  # --matting
    CAPTIONING = "captioning"  # --captioner
    CLIP = "clip"  # --clip


class ModelUnavailable(LayerflowError):
    """Weights that could not be had (not cached while offline, download failed, hash mismatch); one line."""


@dataclass(frozen=True)
class HubSource:
    """Files of a Hugging Face Hub repo; `files` None: the model folder (`MODEL_FOLDER_PATTERNS`)."""

    repo: str
    files: tuple[str, ...] | None = None
    revision: str | None = None  # a commit read from the source; None: `main` at first fetch, then the lock's

    def describe(self) -> str:
        return f"hf.co/{self.repo}" + (f" ({', '.join(self.files)})" if self.files else "")


@dataclass(frozen=True)
class UrlSource:
    """One file published at `<base>/<remote_name>`; cached as `<cache>/models/<group>/<filename>`."""

    remote_name: str
    filename: str
    md5: str | None = None  # as the publisher's own code checks it
    base_env: str = REMBG_URL_ENV
    base: str = REMBG_URL

    @property
    def url(self) -> str:
        return f"{(os.environ.get(self.base_env) or self.base).rstrip('/')}/{self.remote_name}"

    def describe(self) -> str:
        return f"{self.base}/{self.remote_name}"


@dataclass(frozen=True)
class ModelEntry:
    """One model a learned stage can use, under the spec its option takes."""

    spec: str
    group: Group
    source: HubSource | UrlSource
    licence: str
    about: str
    size_bytes: int | None = None  # None: unknown until fetched (the lock then says)


def _rembg(name: str, remote: str, md5: str, licence: str, about: str) -> ModelEntry:
    return ModelEntry(f"rembg:{name}", Group.MATTING, UrlSource(remote, f"{name}.onnx", md5), licence, about)


def _sam2(short: str, repo: str, filename: str, about: str) -> ModelEntry:
    return ModelEntry(f"sam2:{short}", Group.MATTING, HubSource(repo, (filename,)), "Apache-2.0", about)


def _openclip(arch: str, tag: str, repo: str, licence: str, about: str) -> ModelEntry:
    files = ("open_clip_pytorch_model.bin",)  # the file open_clip's own download names (HF_WEIGHTS_NAME)
    return ModelEntry(f"openclip:{arch}:{tag}", Group.CLIP, HubSource(repo, files), licence, about)


# The md5 sums are rembg 2.0.86's (rembg/sessions/*.py); the SAM 2 repos and files are sam2 1.1's
# HF_MODEL_ID_TO_FILENAMES (tests check both against the installed packages); open_clip's hub repos are its
# pretrained configs'.
REGISTRY: dict[str, ModelEntry] = {entry.spec: entry for entry in (
    _rembg("u2netp", "u2netp.onnx", "8e83ca70e441ab06c318d82300c84806", "Apache-2.0",
           "U^2-Net small: fast, coarse edges"),
    _rembg("u2net", "u2net.onnx", "60024c5c889badc19c04ad937298a77b", "Apache-2.0", "U^2-Net, 320 px"),
    _rembg("u2net_human_seg", "u2net_human_seg.onnx", "c09ddc2e0104f800e3e1bb4652583d1f", "Apache-2.0",
           "U^2-Net trained on people"),
    _rembg("silueta", "silueta.onnx", "55e59e0d8062d2f5d013f4725ee84782", "Apache-2.0", "U^2-Net pruned"),
    _rembg("isnet-general-use", "isnet-general-use.onnx", "fc16ebd8b0c10d971d3513d564d01e29", "Apache-2.0",
           "IS-Net (DIS), 1024 px: the CPU default"),
    _rembg("birefnet-general", "BiRefNet-general-epoch_244.onnx", "7a35a0141cbbc80de11d9c9a28f52697", "MIT",
           "BiRefNet, 1024 px: the best edges, slow on a CPU; prompts SAM 2 in the GPU default"),
    _rembg("birefnet-general-lite", "BiRefNet-general-bb_swin_v1_tiny-epoch_232.onnx",
           "4fab47adc4ff364be1713e97b7e66334", "MIT", "BiRefNet with a Swin-T backbone"),
    _sam2("sam2.1_hiera_t", "facebook/sam2.1-hiera-tiny", "sam2.1_hiera_tiny.pt", "SAM 2.1 tiny"),
    _sam2("sam2.1_hiera_s", "facebook/sam2.1-hiera-small", "sam2.1_hiera_small.pt", "SAM 2.1 small"),
    _sam2("sam2.1_hiera_b+", "facebook/sam2.1-hiera-base-plus", "sam2.1_hiera_base_plus.pt",
          "SAM 2.1 base+: tracks the GPU default's object"),
    _sam2("sam2.1_hiera_l", "facebook/sam2.1-hiera-large", "sam2.1_hiera_large.pt", "SAM 2.1 large"),
    _sam2("sam2_hiera_t", "facebook/sam2-hiera-tiny", "sam2_hiera_tiny.pt", "SAM 2 tiny (first release)"),
    _sam2("sam2_hiera_s", "facebook/sam2-hiera-small", "sam2_hiera_small.pt", "SAM 2 small (first release)"),
    _sam2("sam2_hiera_b+", "facebook/sam2-hiera-base-plus", "sam2_hiera_base_plus.pt",
          "SAM 2 base+ (first release)"),
    _sam2("sam2_hiera_l", "facebook/sam2-hiera-large", "sam2_hiera_large.pt", "SAM 2 large (first release)"),
    ModelEntry("hf:HuggingFaceTB/SmolVLM-256M-Instruct", Group.CAPTIONING,
               HubSource("HuggingFaceTB/SmolVLM-256M-Instruct"), "Apache-2.0",
               "SmolVLM 256M (Idefics3 classes): short literal captions on a CPU; the CPU default"),
    ModelEntry("hf:Qwen/Qwen2-VL-2B-Instruct", Group.CAPTIONING, HubSource("Qwen/Qwen2-VL-2B-Instruct"),
               "Apache-2.0", "Qwen2-VL 2B: more precise captions; the GPU default"),
    ModelEntry("hf:Salesforce/blip-image-captioning-base", Group.CAPTIONING,
               HubSource("Salesforce/blip-image-captioning-base"), "BSD-3-Clause",
               "BLIP base: unconditional one-line captions, no chat template"),
    _openclip("ViT-B-32", "laion2b_s34b_b79k", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "MIT",
              "the default: what the default policy's CLIP figures were read with"),
    _openclip("ViT-L-14", "datacomp_xl_s13b_b90k", "laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K", "MIT",
              "stronger and 4x slower: 79.2% zero-shot ImageNet against 66.6%"),
)}

# What `auto` picks per device (`cpu`, `cuda`); a matting default may combine a prompter and SAM 2.
DEFAULTS: dict[Group, dict[str, str]] = {
    Group.MATTING: {"cpu": "rembg:isnet-general-use", "cuda": "rembg:birefnet-general+sam2:sam2.1_hiera_b+"},
    Group.CAPTIONING: {"cpu": "hf:HuggingFaceTB/SmolVLM-256M-Instruct", "cuda": "hf:Qwen/Qwen2-VL-2B-Instruct"},
    Group.CLIP: {"cpu": "openclip:ViT-B-32:laion2b_s34b_b79k", "cuda": "openclip:ViT-B-32:laion2b_s34b_b79k"},
}


def default_spec(group: Group, device: str) -> str:
    """The spec `auto` means for `group` on a resolved device (`cpu`, `cuda`, `cuda:N`)."""
    return DEFAULTS[group]["cpu" if device == "cpu" else "cuda"]


def entry_for(spec: str) -> ModelEntry | None:
    """The registry entry of a spec; `hf:<repo>` not in the registry gets an unpinned entry of its own."""
    if spec in REGISTRY:
        return REGISTRY[spec]
    name, _, repo = spec.partition(":")
    if name == "hf" and repo.count("/") == 1 and not repo.startswith(("/", ".", "~")):
        return ModelEntry(spec, Group.CAPTIONING, HubSource(repo), "see the model card", "not in the registry")
    return None


def entries(group: Group | None = None) -> list[ModelEntry]:
    return [entry for entry in REGISTRY.values() if group in (None, entry.group)]


# The lock file ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pin:
    """What a spec resolved to: the revision (hub commit; None for a URL file) and the sha256 of its weights (of the
    file, or over the folder's files)."""

    spec: str
    revision: str | None
    sha256: str


@dataclass(frozen=True)
class Fetched:
    """Weights on this machine: the file (or model folder) to load, and its pin."""

    path: Path
    pin: Pin
    files: dict[str, dict] = field(default_factory=dict)  # relative name -> {"sha256", "size"}


def lock_path() -> Path:
    return cache_root() / LOCK_NAME


def read_lock() -> dict[str, dict]:
    """spec -> {"source", "revision", "sha256", "files", "path"}; an unreadable lock is an error, not a reset."""
    path = lock_path()
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model lock file {path} is unreadable ({one_line(exc)}); fix or delete it, then run "
                          f"`{FETCH_HINT}` again") from None


def _record(fetched: Fetched, entry: ModelEntry) -> None:
    from filelock import FileLock  # a dependency of huggingface_hub

    path = lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        lock = read_lock()
        lock[fetched.pin.spec] = {"source": entry.source.describe(), "revision": fetched.pin.revision,
                                  "sha256": fetched.pin.sha256, "files": fetched.files, "path": str(fetched.path)}
        write_json_atomic(lock, path)


# Fetching --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Access:
    """How loaders may get weights in one run: whether the network may be used, and the pins the driver decided (so
    every worker loads the same files, fetched at most once per node)."""

    offline: bool = False
    pins: tuple[Pin, ...] = ()
    chosen: tuple[tuple[Group, str], ...] = ()  # what `auto` became per group ("" : the weight-free path)

    def pin(self, spec: str) -> Pin | None:
        return next((pin for pin in self.pins if pin.spec == spec), None)

    def auto(self, group: Group) -> str | None:
        """The spec the driver chose for `auto` ("" for none), or None when no driver chose (a library call)."""
        return next((spec for chosen, spec in self.chosen if chosen is group), None)


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, but at call time (its constant is fixed at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def default_access() -> Access:
    """Outside a build (eval, doctor, a library call): offline when HF_HUB_OFFLINE says so."""
    return Access(offline=hub_offline())


def enter_offline_mode() -> None:
    """From here on this process (and the workers it starts) treats the hub as unreachable, as HF_HUB_OFFLINE=1
    would: huggingface_hub reads that variable once, at import, and otherwise makes requests of its own (a registry
    it refreshes daily) even for a cache look-up, each a timeout on a network that hangs."""
    import sys

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def probe(url: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """One attempt to reach the hub; False when it does not answer within `timeout` seconds (whatever hangs: DNS,
    connect, or a server that accepts and never answers: the attempt runs in a thread the caller stops waiting for)."""
    answered = threading.Event()

    def attempt() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url or hub_endpoint(), method="HEAD"), timeout=timeout)
            answered.set()
        except urllib.error.HTTPError:  # any HTTP answer means the network is there
            answered.set()
        except Exception:  # noqa: BLE001 - no network, refused, timed out: unreachable, which is the answer
            pass

    thread = threading.Thread(target=attempt, daemon=True, name="layerflow-probe")
    thread.start()
    thread.join(timeout)
    return answered.is_set()


def ensure(spec: str, access: Access | None = None) -> Fetched:
    """The weights of a registry spec (or `hf:<repo>`) on this machine, fetched when missing and allowed.

    With a pin (decided by the driver), exactly that revision and hash; else the lock's; else the source's latest,
    which the lock then pins. Raises `ModelUnavailable` (one line naming `models fetch`) when they cannot be had.
    """
    access = access or default_access()
    entry = entry_for(spec)
    if entry is None:
        raise ConfigError(f"{spec!r} is not in the model registry; see `layerflow-data models list`")
    pin = access.pin(spec)
    locked = read_lock().get(spec)
    revision = pin.revision if pin else (locked or {}).get("revision") or getattr(entry.source, "revision", None)
    expected = pin.sha256 if pin else (locked or {}).get("sha256")
    try:
        if isinstance(entry.source, HubSource):
            try:  # the cache first, without a request (a pinned or locked revision that is here needs none)
                fetched = _hub(entry, entry.source, revision, offline=True)
            except Exception:  # noqa: BLE001 - not cached (in full): fetch it, if allowed
                if access.offline:
                    raise
                fetched = _hub(entry, entry.source, revision, offline=False)
        else:
            fetched = _url(entry, entry.source, access.offline)
    except ModelUnavailable:
        raise
    except Exception as exc:  # whatever the hub client or the socket raised: the weights cannot be had
        raise _unavailable(spec, access, one_line(exc)) from None
    if expected and fetched.pin.sha256 != expected:
        raise ModelUnavailable(
            f"model {spec}: the weights at {fetched.path} have sha256 {fetched.pin.sha256[:12]}..., but "
            f"{'this build' if pin else 'the lock file'} pins {expected[:12]}... (a corrupted or replaced file); "
            f"delete it and run `{FETCH_HINT} {spec}`")
    if not locked or locked.get("sha256") != fetched.pin.sha256 or locked.get("revision") != fetched.pin.revision:
        _record(fetched, entry)
    return fetched


def locate(spec: str) -> Path | None:
    """Where the spec's weights are on this machine (disk only, no hashing), or None."""
    entry = entry_for(spec)
    if entry is None:
        return None
    if isinstance(entry.source, UrlSource):
        path = _url_target(entry, entry.source)
        return path if path.is_file() else None
    locked = read_lock().get(spec) or {}
    try:
        return _hub_files(entry.source, locked.get("revision") or entry.source.revision, offline=True)[0]
    except Exception:  # noqa: BLE001 - not in the cache (or a partial one): not here
        return None


def _unavailable(spec: str, access: Access, why: str) -> ModelUnavailable:
    state = "not in the local cache (and not downloaded here)" if access.offline else f"could not be fetched ({why})"
    return ModelUnavailable(f"model {spec}: weights {state}; run `{FETCH_HINT} {spec}` on a machine with network "
                            "access (then copy the caches here, see README \"Models\")")


def _hub_files(source: HubSource, revision: str | None, offline: bool) -> tuple[Path, Path]:
    """(what to load: the file, or the snapshot folder; the snapshot folder), from the cache or the hub."""
    from huggingface_hub import hf_hub_download, snapshot_download

    if source.files is None:
        folder = Path(snapshot_download(source.repo, revision=revision, allow_patterns=list(MODEL_FOLDER_PATTERNS),
                                        local_files_only=offline))
        if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
            # a partial snapshot (e.g. config.json alone, fetched by some other tool) is not the model
            raise FileNotFoundError(f"{source.repo} has no config.json and weights at {folder}")
        return folder, folder
    paths = [Path(hf_hub_download(source.repo, name, revision=revision, local_files_only=offline))
             for name in source.files]
    folder = paths[0].parents[len(Path(source.files[0]).parts) - 1]  # snapshots/<commit>/
    return paths[0], folder


def _hub(entry: ModelEntry, source: HubSource, revision: str | None, offline: bool) -> Fetched:
    target, folder = _hub_files(source, revision, offline)
    names = source.files or sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    files = {name: {"sha256": file_sha256(folder / name), "size": (folder / name).stat().st_size} for name in names}
    digest = files[names[0]]["sha256"] if source.files and len(names) == 1 else files_digest(files)
    return Fetched(target, Pin(entry.spec, folder.name, digest), files)  # the snapshot folder is named by commit


def _url_target(entry: ModelEntry, source: UrlSource) -> Path:
    return cache_root() / "models" / entry.group.value / source.filename


def _url(entry: ModelEntry, source: UrlSource, offline: bool) -> Fetched:
    from filelock import FileLock

    target = _url_target(entry, source)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):  # one download per node, whoever asks first
        if not target.is_file():
            if offline:
                raise FileNotFoundError(f"{target} is not there")
            _download(source.url, target, source.md5)
    sha = file_sha256(target)
    files = {source.filename: {"sha256": sha, "size": target.stat().st_size}}
    return Fetched(target, Pin(entry.spec, None, sha), files)


def _download(url: str, target: Path, md5: str | None) -> None:
    """`url` to `target` through a temporary name, with a progress bar; refused (and removed) on an md5 mismatch."""
    from tqdm.auto import tqdm

    partial = target.with_name(f".{target.name}.part-{os.getpid()}")
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=30) as response, partial.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name) as bar:
                while block := response.read(1 << 20):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
        if md5 and digest.hexdigest() != md5:
            raise ModelUnavailable(f"download of {url} has md5 {digest.hexdigest()}, its publisher lists {md5} "
                                   "(a corrupted or replaced file); it was not kept")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def files_digest(files: dict[str, dict]) -> str:
    """One sha256 over a folder's files (each relative name and its sha256, in name order)."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name]["sha256"].encode())
    return digest.hexdigest()


def verify() -> list[tuple[str, str]]:
    """(spec, problem) for every locked model whose files are missing or whose hashes changed."""
    problems = []
    for spec, locked in read_lock().items():
        path = Path(locked["path"])
        folder = path if path.is_dir() else path.parent  # a model folder, or the folder of the one file
        for name, want in locked.get("files", {}).items():
            path = folder / name
            if not path.is_file():
                problems.append((spec, f"{name}: missing at {path}"))
            elif file_sha256(path) != want["sha256"]:
                problems.append((spec, f"{name}: sha256 changed since it was fetched ({path})"))
    return problems


_COMBINES = re.compile(r"\+(?=[A-Za-z][\w-]*(?::|$))")  # a '+' before a backend name; not the one of `hiera_b+`


def split_combined(spec: str) -> list[str]:
    """`rembg:birefnet-general+sam2:sam2.1_hiera_b+` -> its two backends' specs (`b+` is part of a config name)."""
    return [part.strip() for part in _COMBINES.split(spec.strip())]


def parts_of(spec: str) -> list[str]:
    """The registry specs in a spec: `rembg:birefnet-general+sam2:sam2.1_hiera_b+` has two; `rembg` is u2net's and
    `sam2` SAM 2.1 tiny's, as the backends read them. A part not in the registry is a `ConfigError`."""
    aliases = {"rembg": "rembg:u2net", "sam2": "sam2:sam2.1_hiera_t"}
    parts = [aliases.get(part, part) for part in split_combined(spec)]
    for part in parts:
        if entry_for(part) is None:
            raise ConfigError(f"{part!r} is not in the model registry (see `layerflow-data models list`); a local "
                              "file needs no fetching")
    return parts


def wanted_specs(specs: list[str], defaults: bool, device: str) -> list[str]:
    """What `models fetch` fetches: the specs named and, with `defaults`, those `auto` picks on `device`."""
    if defaults and device == "auto":
        from manifests.device import resolve_device

        device = resolve_device(device)
    wanted = [*specs, *([default_spec(group, device) for group in Group] if defaults else [])]
    if not wanted:
        raise ConfigError("models fetch: name specs (see `layerflow-data models list`) or pass --defaults")
    return wanted


def fetch_specs(specs: list[str], access: Access | None = None) -> list[Fetched]:
    """`models fetch`: each spec's weights cached, verified and locked (downloaded when missing)."""
    return [ensure(part, access) for spec in specs for part in parts_of(spec)]


def listing() -> list[dict]:
    """`models list`: every registry model with its pin and where it is cached; disk only (works offline)."""
    lock = read_lock()
    rows = []
    for entry in REGISTRY.values():
        locked = lock.get(entry.spec, {})
        size = sum(f["size"] for f in locked.get("files", {}).values()) or entry.size_bytes
        default = [device for group in DEFAULTS.values() for device, spec in group.items()
                   if entry.spec in split_combined(spec)]
        rows.append({"group": entry.group.value, "spec": entry.spec, "source": entry.source.describe(),
                     "licence": entry.licence, "about": entry.about, "size_bytes": size,
                     "revision": locked.get("revision") or getattr(entry.source, "revision", None)
                     or ("file" if isinstance(entry.source, UrlSource) else None),
                     "sha256": locked.get("sha256") or None, "cached": str(locate(entry.spec) or "") or None,
                     "default_for": sorted(set(default))})
    return rows
