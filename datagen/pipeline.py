"""The plain-Python runner: the same stage classes, one process, a loop (tests, benchmarks, debugging)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from datagen.rows import R, from_batch, to_batch
from datagen.stages import set_up

if TYPE_CHECKING:  # the contract, for type hints only: `datagen.runner` imports this module
    from datagen.runner import StageSpec


class LocalRunner:
    """Runs each stage once per process, batch by batch, with a progress bar."""

    name = "local"
    gpus = None  # no GPU scheduling: the stages run here, on --device

    def __init__(self, batch_size: int = 1, progress: bool = True, threads: int | None = None) -> None:
        """`threads`: intra-op threads of torch and OpenCV in this process (None: their defaults, one per core; the
        throughput bench passes 1, the share of a Ray task, to compare the runners per core)."""
        self.batch_size = batch_size
        self.progress = progress
        self.threads = threads
        self.cpus = os.cpu_count() or 1

    def run(self, rows: list[R], stages: list[StageSpec], desc: str) -> Iterator[list[R]]:
        if not rows:
            return
        row_type = type(rows[0])
        instances = set_up(stages, self.threads)
        with tqdm(total=len(rows), desc=desc, unit="row", disable=not self.progress) as bar:
            for start in range(0, len(rows), self.batch_size):
                batch = to_batch(rows[start : start + self.batch_size])
                for stage in instances:
                    batch = stage(batch)
                out = from_batch(batch, row_type)
                bar.update(len(out))
                yield out

    def close(self) -> None:
        """Nothing to release: the stages live as long as `run`."""

    def __enter__(self) -> LocalRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
