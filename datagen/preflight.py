"""What a build's backends need, checked before any work, in one place for `build` and `doctor`: which stages run a
learned model (and so can hold a GPU), and whether the matting backend and the captioner load."""

from __future__ import annotations

from contextlib import suppress
from dataclasses import asdict, dataclass, replace

from datagen.config import BuildConfig
from datagen.scheduling import StageName
from datagen.stages import setup_error
from filters.clip import ClipChoice, resolve_clip
from manifests.device import resolve_device
from manifests.errors import ConfigError, one_line
from manifests.models import (
    FETCH_HINT,
    PROBE_TIMEOUT_S,
    RANDOM_SUFFIX,
    REGISTRY,
    Access,
    Group,
    ModelUnavailable,
    Pin,
    default_spec,
    ensure,
    enter_offline_mode,
    entry_for,
    hub_endpoint,
    hub_offline,
    locate,
    probe,
    split_combined,
)


def learned_stages(config: BuildConfig, clip: ClipChoice) -> set[StageName]:
    """The stages whose backend is a learned model that can use a GPU."""
    from datagen.captioning import uses_gpu as captioner_uses_gpu
    from datagen.matting import uses_gpu as matting_uses_gpu

    learned = set()
    if matting_uses_gpu(config.matting, config.access):
        learned.add(StageName.MATTE)
    if captioner_uses_gpu(config.captioner):
        learned.add(StageName.CAPTION)
    if clip.weights is not None:
        learned.add(StageName.CLIP)
    return learned


def load_backend(stage: StageName, config: BuildConfig, device: str) -> object:
    """The learned backend of a stage (matting, captioner), loaded as the stage will load it on `device`."""
    from datagen.captioning import load_captioner
    from datagen.matting import load_matting

    if stage is StageName.MATTE:
        return load_matting(config.matting, device, config.access)  # each backend checks the device it is given
    return load_captioner(config.captioner, device, config.access)


def preflight(config: BuildConfig, on_cluster: bool = False) -> None:
    """`build`'s check before any work: the device, and that the matting backend and the captioner load. A wrong
    spec is a `ConfigError`, a model that does not load a `StageSetupError`: one line either way. On a cluster the
    GPUs are the workers', so the specs are only loaded on the CPU here (`doctor --ray-address` checks the rest)."""
    if not on_cluster:
        resolve_device(config.device)
    for stage in (StageName.MATTE, StageName.CAPTION):
        try:
            load_backend(stage, config, "cpu" if on_cluster else config.device)
        except ConfigError:
            raise
        except Exception as exc:  # whatever the library raises, it is this stage's setup that failed
            raise setup_error(stage, exc) from exc


# The weights of a build ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Models:
    """What each learned stage of a build runs, decided once in the driver: the config to run (its `access` says
    offline or not, the pins every worker loads, and what `auto` became), the CLIP choice, and per option what was
    asked for, what runs, its pin and why (for the log, `_summary.json` and the report)."""

    config: BuildConfig
    clip: ClipChoice
    stages: dict[str, dict]

    def record(self) -> dict:
        """What `_build.json` pins: a resume that would run other weights is refused like other changed settings."""
        return {option: {key: stage[key] for key in ("runs", "pins")} for option, stage in self.stages.items()}

    @property
    def random_weights(self) -> bool:
        """A stage runs randomly initialised weights (`sam2:<config>:random`): marked in the summary and rows."""
        return any(RANDOM_SUFFIX in stage["runs"] for stage in self.stages.values())

    def lines(self) -> list[str]:
        return [f"{option}: {stage['runs'] or 'none'} - {stage['why']}" for option, stage in self.stages.items()]


WEIGHT_FREE = "given, else bgsub"  # what `--matting auto` runs without learned weights


class Network:
    """Whether weights may be downloaded in this build: `--offline`, else HF_HUB_OFFLINE, else one probe of the hub
    (at most `PROBE_TIMEOUT_S`), made only when a model is missing and shared by every stage."""

    def __init__(self, offline_flag: bool) -> None:
        self.offline: bool | None = True if offline_flag or hub_offline() else None
        self.why = "--offline" if offline_flag else "HF_HUB_OFFLINE is set" if self.offline else ""
        if offline_flag:
            enter_offline_mode()

    def online(self) -> bool:
        if self.offline is None:
            self.offline = not probe()
            self.why = f"{hub_endpoint()} did not answer within {PROBE_TIMEOUT_S:g} s" if self.offline else ""
            if self.offline:  # no library may try again: each try would be another timeout
                enter_offline_mode()
        return not self.offline


def registry_parts(option: str, spec: str) -> list[str]:
    """The registry specs a `--matting` / `--captioner` / `--clip` spec loads weights from (none for weight-free
    backends, local files, `:random`, and rembg models already in rembg's own cache)."""
    if option == "captioner":
        return [spec] if spec.startswith("hf:") and entry_for(spec) else []
    if option == "clip":
        return [spec] if spec in REGISTRY else []
    from datagen.matting.rembg_backend import cached_model

    parts = []
    for part in split_combined(spec):
        name, _, option_text = part.partition(":")
        if name == "rembg":
            model = option_text or "u2net"
            if f"rembg:{model}" in REGISTRY and cached_model(model)[0] is None:
                parts.append(f"rembg:{model}")
        elif name == "sam2" and ":" not in option_text:  # no checkpoint file, not `:random`
            config = (option_text or "sam2.1_hiera_t").removeprefix("configs/").rpartition("/")[2]
            if f"sam2:{config.removesuffix('.yaml')}" in REGISTRY:
                parts.append(f"sam2:{config.removesuffix('.yaml')}")
    return parts


def choose_models(config: BuildConfig, learned_defaults: bool, on_cluster: bool = False) -> Models:
    """Decide, once, what each learned stage of a build runs, and fetch what is missing (when allowed).

    A named model that cannot be had is a one-line `ModelUnavailable` (a setup error). `auto` is the registry's
    default for the device with `learned_defaults` (a build of real sources), fetched when missing; offline without
    it cached, or without `learned_defaults` (the built-in demo), it is the weight-free path: `bgsub` / `given`
    mattes, sidecar captions, and CLIP only if its weights are cached.
    """
    device = ("cuda" if config.device.startswith("cuda") else "cpu") if on_cluster else resolve_device(config.device)
    network = Network(config.offline)
    pins: list[Pin] = []
    stages: dict[str, dict] = {}

    def obtain(option: str, spec: str) -> list[Pin]:
        got = []
        for part in registry_parts(option, spec):
            cached = locate(part) is not None
            if not cached and not network.online():
                raise ModelUnavailable(f"model {part}: not in the local cache and offline ({network.why}); run "
                                       f"`{FETCH_HINT} {part}` on a machine with network access")
            got.append(ensure(part, Access(offline=cached or bool(network.offline))).pin)
        return got

    def choose(option: str, requested: str, group: Group, fallback: str, fallback_why: str) -> str:
        if requested != "auto":
            got = obtain(option, requested)
            why = "random weights: for tests and benchmarks only" if RANDOM_SUFFIX in requested else \
                "named" + (", weights " + ", ".join(_pin_text(pin) for pin in got) if got else "")
            stages[option] = {"requested": requested, "runs": requested, "pins": [asdict(p) for p in got], "why": why}
            pins.extend(got)
            return requested
        runs, got, why = fallback, [], fallback_why
        if learned_defaults:
            default = default_spec(group, device)
            try:
                got = obtain(option, default)
                runs, why = default, f"the {device} default, weights " + ", ".join(_pin_text(pin) for pin in got)
            except ModelUnavailable as exc:
                why = f"the {device} default {default} is not available ({one_line(exc)})"
        stages[option] = {"requested": "auto", "runs": runs, "pins": [asdict(p) for p in got], "why": why}
        pins.extend(got)
        return runs

    demo_why = "auto without learned defaults (the built-in demo): the weight-free path; name a model to use one"
    matting = choose("matting", config.matting, Group.MATTING, WEIGHT_FREE, demo_why)
    captioner = choose("captioner", config.captioner, Group.CAPTIONING, "sidecar", demo_why)
    clip_setting = config.clip
    if clip_setting != "none":
        clip_spec = default_spec(Group.CLIP, device) if clip_setting == "auto" else clip_setting
        cached = all(locate(part) for part in registry_parts("clip", clip_spec))
        if clip_setting != "auto" or learned_defaults or cached:  # the demo fetches nothing
            with suppress(ModelUnavailable):  # resolve_clip below says why the scores are null
                pins.extend(obtain("clip", clip_spec))
    access = Access(offline=bool(network.offline), pins=tuple(pins),
                    chosen=((Group.MATTING, matting if matting not in ("auto", WEIGHT_FREE) else ""),
                            (Group.CAPTIONING, captioner if config.captioner == "auto" else "")))
    clip = resolve_clip(clip_setting, Access(offline=True, pins=access.pins), device=device)
    clip_pins = [asdict(pin) for pin in access.pins if pin.spec == clip.spec]
    stages["clip"] = {"requested": clip_setting, "runs": "" if clip.unavailable else clip.spec or "",
                      "pins": clip_pins, "why": clip.unavailable or f"weights {clip.weights}"}
    return Models(replace(config, captioner=captioner, access=access), clip, stages)


def _pin_text(pin: Pin) -> str:
    return f"{pin.spec}@{(pin.revision or 'file')[:12]} sha256 {pin.sha256[:12]}"
