"""The runner contract: a stage as the runners see it (`StageSpec`), what a runner does (`Runner`), and the factory
that picks one: the plain-Python loop (`datagen.pipeline`) or Ray Data (`datagen.ray_runner`, the only module that
imports Ray). Both run the same stage classes on the same rows."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from datagen.scheduling import StageName


@dataclass(frozen=True)
class StageSpec:
    """A stage class, its constructor arguments, and how it is scheduled (see `datagen.scheduling`)."""

    name: StageName
    cls: type
    kwargs: dict = field(default_factory=dict)
    concurrency: int = 2
    num_cpus: float = 1.0
    num_gpus: float = 0.0  # per actor (fractions share a GPU)
    actor: bool = False  # a learned model: a pool of long-lived actors, each loading it once


class Runner(Protocol):
    """Runs stage chains over rows; a context manager whose exit releases what it started (a local Ray)."""

    name: str
    cpus: float
    gpus: float | None  # the GPUs the runner can schedule; None: it runs in one process, on --device

    def run(self, rows: list[dict], stages: list[StageSpec], desc: str) -> Iterator[list[dict]]:
        """Push `rows` through `stages`; yield the output rows batch by batch, in any order."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Runner: ...

    def __exit__(self, *exc_info: object) -> None: ...


def make_runner(no_ray: bool = False, ray_address: str | None = None, num_cpus: int | None = None) -> Runner:
    """The plain-Python runner, or Ray Data (local, or the cluster at `ray_address`); Ray is imported only here,
    lazily, through `datagen.ray_runner`."""
    if no_ray:
        from datagen.pipeline import LocalRunner

        return LocalRunner()
    from datagen.ray_runner import RayRunner

    return RayRunner(address=ray_address, num_cpus=num_cpus)
