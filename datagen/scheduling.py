"""How a build's stages share the cluster: which run as GPU actors, how many copies of each run, and each
copy's share of a GPU. Runtime only (never in the dataset fingerprint); plain Python, so the Ray runner only maps
the plan onto operators.

Stages whose backend is a learned model (rembg / SAM 2 matting, `hf:` captioning, open_clip scoring) load it once
per worker. With GPUs each such stage is an actor pool of its own, every actor holding `gpus_per_actor` of a GPU
(fractional shares put several small models on one GPU) and half a CPU for its pre- and post-processing; the CPU
stages (decode, compose, score) run as tasks beside them, so decoding never waits for a GPU. Without GPUs the
learned stages run as CPU tasks like the rest (an actor would hold its CPU for the whole phase), told `cpu`
explicitly: a worker never picks up a GPU that Ray did not reserve for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import Enum

from datagen.config import BuildConfig
from manifests.errors import ConfigError


class StageName(str, Enum):
    """The build's stages, as named in `--concurrency STAGE=N` / `--gpus-per-actor STAGE=F` and the summary."""

    DECODE = "decode"
    MATTE = "matte"
    COMPOSE = "compose"
    CAPTION = "caption"
    SCORE = "score"
    CLIP = "clip"


# The stages that can run a learned model, by build phase: GPU stages of one phase run at the same time and so
# share the GPUs; the two phases run one after the other.
GPU_STAGES_BY_PHASE: tuple[tuple[StageName, ...], ...] = (
    (StageName.MATTE,),
    (StageName.CAPTION, StageName.CLIP),
)
DEFAULT_CONCURRENCY = 2
DEFAULT_LEARNED_CPU_CONCURRENCY = 1  # a learned model on the CPU: one copy, it uses every core it is given
GPU_ACTOR_CPUS = 0.5  # CPUs each GPU actor holds


@dataclass(frozen=True)
class Resources:
    """What the user asked for: `--gpus`, `--concurrency` (all CPU stages, or STAGE=N), `--gpus-per-actor` (STAGE=F)."""

    gpus: float | None = None  # GPUs for the learned stages; None: all the cluster has, unless --device cpu
    concurrency: int = DEFAULT_CONCURRENCY  # copies of each CPU stage
    stage_concurrency: dict[StageName, int] = field(default_factory=dict)  # per-stage copies (overrides)
    gpus_per_actor: dict[StageName, float] = field(default_factory=dict)  # per GPU stage: its share of a GPU

    @classmethod
    def from_options(cls, gpus: float | None = None, concurrency: list[str] = (),
                     gpus_per_actor: list[str] = ()) -> Resources:
        """From `--gpus`, `--concurrency` (`4`: every CPU stage; `decode=4,matte=2`: those stages) and
        `--gpus-per-actor` (`matte=0.5`)."""
        bare, copies = stage_values(list(concurrency), "--concurrency", int)
        share, shares = stage_values(list(gpus_per_actor), "--gpus-per-actor", float)
        if share is not None:
            raise ConfigError(f"--gpus-per-actor {share:g}: name the stage, e.g. matte={share:g}")
        return cls(gpus=gpus, concurrency=DEFAULT_CONCURRENCY if bare is None else bare, stage_concurrency=copies,
                   gpus_per_actor=shares)

    def __post_init__(self) -> None:
        if self.gpus is not None and self.gpus < 0:
            raise ConfigError(f"--gpus must be >= 0, got {self.gpus:g}")
        if self.concurrency < 1:
            raise ConfigError(f"--concurrency must be >= 1, got {self.concurrency}")
        for stage, copies in self.stage_concurrency.items():
            if copies < 1:
                raise ConfigError(f"--concurrency {stage.value}={copies}: must be >= 1")
        for stage, share in self.gpus_per_actor.items():
            if stage not in learned_capable():
                actors = ", ".join(s.value for s in learned_capable())
                raise ConfigError(f"--gpus-per-actor {stage.value}={share:g}: {stage.value} is a CPU stage (the GPU "
                                  f"actors are {actors})")
            if share <= 0 or (share > 1 and share != int(share)):
                raise ConfigError(f"--gpus-per-actor {stage.value}={share:g}: a fraction in (0, 1] or a whole number "
                                  "of GPUs")


def stage_values(options: list[str], option: str, cast: type) -> tuple[object | None, dict[StageName, object]]:
    """`["decode=4,matte=2", "clip=1"]` -> (None, {DECODE: 4, MATTE: 2, CLIP: 1}); a bare value (`"4"`) is the
    first item. A repeatable `key=value` option: `--concurrency decode=4,matte=2`, `--gpus-per-actor matte=0.5`."""
    bare, per_stage = None, {}
    names = ", ".join(stage.value for stage in StageName)
    for part in (piece.strip() for text in options for piece in text.split(",") if piece.strip()):
        name, has_stage, value = part.rpartition("=") if "=" in part else ("", False, part)
        try:
            parsed = cast(value)
        except ValueError:
            raise ConfigError(f"{option} {part!r}: {value!r} is not {'a whole number' if cast is int else 'a number'}"
                              ) from None
        if not has_stage:
            bare = parsed
            continue
        try:
            per_stage[StageName(name.strip())] = parsed
        except ValueError:
            raise ConfigError(f"{option} {part!r}: no stage {name!r}; the stages are {names}") from None
    return bare, per_stage


def learned_capable() -> tuple[StageName, ...]:
    return tuple(stage for phase in GPU_STAGES_BY_PHASE for stage in phase)


@dataclass(frozen=True)
class StagePlan:
    """How one stage runs: `actor` (a pool of `concurrency` long-lived actors) or tasks, and its resources."""

    concurrency: int
    actor: bool = False
    num_gpus: float = 0.0  # per actor
    num_cpus: float = 1.0  # per task or actor
    device: str = "cpu"  # what the stage's learned backend is told (auto | cpu | cuda)

    def describe(self) -> str:
        if not self.actor:
            return f"{self.concurrency} task(s) at once"
        where = f"{self.num_gpus:g} GPU each" if self.num_gpus else "CPU"
        return f"{self.concurrency} actor(s), {where}"


def plan_stages(config: BuildConfig, resources: Resources, learned: set[StageName],
                cluster_gpus: float | None, cluster_cpus: float = 1.0) -> dict[StageName, StagePlan]:
    """The plan of every stage. `learned`: the stages whose configured backend is a learned model.

    `cluster_gpus` / `cluster_cpus` are what Ray reports; `cluster_gpus` None when there is no Ray (`--no-ray`:
    one process, on `--device`). Raises `ConfigError` (one line) for a request the cluster cannot serve.
    """
    copies = {stage: resources.stage_concurrency.get(stage) for stage in StageName}
    if cluster_gpus is None:
        if resources.gpus or resources.gpus_per_actor:
            raise ConfigError("--gpus / --gpus-per-actor schedule Ray actors; with --no-ray the stages run in this "
                              "process on --device")
        return {stage: StagePlan(copies[stage] or resources.concurrency, device=config.device) for stage in StageName}

    gpus = _usable_gpus(config, resources, learned, cluster_gpus)
    plans: dict[StageName, StagePlan] = {}
    for phase in GPU_STAGES_BY_PHASE:
        on_gpu = [stage for stage in phase if stage in learned and gpus > 0]
        for stage in on_gpu:
            share = resources.gpus_per_actor.get(stage, min(1.0, gpus / len(on_gpu)))
            default_copies = max(1, math.floor(gpus / len(on_gpu) / share + 1e-9))
            plans[stage] = StagePlan(copies[stage] or default_copies, actor=True, num_gpus=share,
                                     num_cpus=GPU_ACTOR_CPUS, device=config.device)
        parts = ", ".join(f"{s.value} {plans[s].concurrency} x {plans[s].num_gpus:g}" for s in on_gpu)
        asked = sum(plans[stage].concurrency * plans[stage].num_gpus for stage in on_gpu)
        if asked > gpus + 1e-9:
            raise ConfigError(f"the GPU stages that run together ask for {asked:g} GPUs ({parts}) but --gpus gives "
                              f"{gpus:g}; lower --concurrency STAGE=N or --gpus-per-actor STAGE=F")
        held = sum(plans[stage].concurrency * plans[stage].num_cpus for stage in on_gpu)
        if on_gpu and held > cluster_cpus - 1:  # the CPU stages of the phase need at least one CPU
            raise ConfigError(f"the GPU actors that run together ({parts}) hold {held:g} of the cluster's "
                              f"{cluster_cpus:g} CPUs ({GPU_ACTOR_CPUS:g} each), leaving under one for decoding and "
                              "writing; lower --concurrency STAGE=N or add CPUs")
    for stage in StageName:
        if stage in plans:
            continue
        if stage in learned:  # a learned model on the CPU, told so: Ray reserved no GPU for it
            plans[stage] = StagePlan(copies[stage] or DEFAULT_LEARNED_CPU_CONCURRENCY, device="cpu")
        else:
            plans[stage] = StagePlan(copies[stage] or resources.concurrency)
    return plans


def _usable_gpus(config: BuildConfig, resources: Resources, learned: set[StageName], cluster_gpus: float) -> float:
    where = f"the Ray cluster has {cluster_gpus:g} GPU(s)"
    if resources.gpus is not None and resources.gpus > cluster_gpus:
        raise ConfigError(f"--gpus {resources.gpus:g}: {where}; lower --gpus or add GPU nodes")
    if config.device == "cpu":
        if resources.gpus:
            raise ConfigError(f"--gpus {resources.gpus:g} with --device cpu: the learned stages would hold GPUs "
                              "they never use; drop one of the two")
        return 0.0
    gpus = cluster_gpus if resources.gpus is None else resources.gpus
    if config.device == "cuda" and learned and gpus == 0:
        names = ", ".join(sorted(stage.value for stage in learned))
        raise ConfigError(f"--device cuda: no GPU for the learned stages ({names}): {where}"
                          f"{' and --gpus is 0' if resources.gpus == 0 else ''}; add GPUs or pass --device cpu")
    return float(gpus)


def with_device(config: BuildConfig, plan: StagePlan) -> BuildConfig:
    """The build config a stage is set up with: the same, except the device its plan runs it on."""
    return config if plan.device == config.device else replace(config, device=plan.device)
