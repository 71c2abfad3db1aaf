"""The Ray Data runner; the only module that imports Ray.

CPU stages run as Ray tasks on Ray's pooled worker processes, each process setting a stage chain up
once and reusing it for every later batch and phase (no actor start-up per stage and phase).
A phase of CPU stages only is a stream of Ray core tasks, each running the whole chain on a row or a few
(`RayRunner._tasks`). A phase with a learned model on GPUs (`StageSpec.actor`) goes through Ray Data:
consecutive CPU stages with the same resources share one operator, like Ray Data's own fusion, and the
learned stage is an operator of its own, a pool of actors that each load the model once and hold their GPU
share (`num_gpus`) for the phase, so decoding and writing keep running on the CPUs beside them. Rows carry
only JSON and file paths between stages.

A worker process that dies (a native crash, out of memory, a killed node) is not an exception a stage can catch.
Ray retries its task, but Ray Data's default is to retry forever, so one poison input would stall the build: here
each task is tried `ATTEMPTS` times (Ray Data takes `max_retries` / `max_restarts` only as the `ray_remote_args` it
deprecates for 2.64, with no named replacement yet: pyproject pins ray below 2.64). If a phase still fails, the rows
it did not finish are run again one per task, so the rows that crash are isolated: each gets `ATTEMPTS` tries and
then becomes a failure row; the rest finish.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Iterator
from itertools import groupby
from typing import TYPE_CHECKING

import ray

from datagen.rows import KEY, ROW, Batch, Failure, R, encode, from_batch, to_batch
from datagen.stages import set_up
from manifests.errors import StageSetupError, one_line
from manifests.layers import Stage

log = logging.getLogger(__name__)
# max_retries / max_restarts (see above) are `ray_remote_args`; the warning says they go in Ray 2.64 (pinned below).
warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated", category=DeprecationWarning)


if TYPE_CHECKING:  # the contract, for type hints only: `datagen.runner` imports this module
    from datagen.runner import StageSpec


SETUP_ERROR = "setup_error"  # a column of a batch whose stages could not be set up: the one-line reason


class StageChain:
    """Several stages set up once and applied in order to every batch.

    A stage that cannot be set up (its model does not load, no GPU) is not raised in the worker: Ray would report it
    as a failed task (Ray Data drops the exception's class), indistinguishable from a worker that crashed. Every batch
    carries a `SETUP_ERROR` column instead ('' or the one-line reason, passed through the operators after it), and
    the driver stops the build with the reason (`checked`).
    """

    def __init__(self, specs: list[StageSpec]) -> None:
        threads = max(1, math.floor(min(spec.num_cpus for spec in specs)))  # the CPUs each copy holds, at least one
        try:
            self.stages, self.setup_error = set_up(specs, threads), None
        except StageSetupError as exc:
            self.stages, self.setup_error = [], str(exc)

    def __call__(self, batch: Batch) -> Batch:
        if any(batch.get(SETUP_ERROR, ())):  # an operator before this one could not be set up
            return batch
        if self.setup_error is None:
            for stage in self.stages:
                batch = stage(batch)
        return {KEY: batch[KEY], ROW: batch[ROW], SETUP_ERROR: [self.setup_error or ""] * len(batch[KEY])}


MAX_ROWS_PER_TASK = 16
RESULT_ROWS = 8  # rows handed back to the build at a time (a manifest part each), as Ray Data's batches of 8 were
TASKS_PER_CPU = 64  # Ray core tasks of a phase per CPU before a task carries more than one row
ATTEMPTS = 3  # tries of a task whose worker died, before its rows are isolated (and then, one by one, failed)
KEPT_CHAINS = 4  # the chains a worker keeps (a build's two phases, and the build before): each holds its models
_CHAINS: dict[str, StageChain] = {}  # per worker process: the chains it has set up, oldest first


def rows_per_task(rows: int, cpus: int, tasks_per_cpu: int | None = None) -> int:
    """Rows per task: one (the best balance) until a phase has `tasks_per_cpu` (default `TASKS_PER_CPU`) tasks per
    CPU, then more, up to `MAX_ROWS_PER_TASK`, so a million-row phase is not a million tasks."""
    return min(MAX_ROWS_PER_TASK, max(1, math.ceil(rows / ((tasks_per_cpu or TASKS_PER_CPU) * cpus))))


def run_chain(batch: Batch, specs: list[StageSpec]) -> Batch:
    """Ray task body: the stage chain of this worker process (set up on its first batch)."""
    key = repr(specs)
    if key not in _CHAINS:
        _CHAINS[key] = StageChain(specs)
        while len(_CHAINS) > KEPT_CHAINS:  # a long-lived driver's earlier builds: their models and caches go
            del _CHAINS[next(iter(_CHAINS))]
    return _CHAINS[key](batch)


class StageActor(StageChain):
    """The actor form of a stage chain (one learned stage): its model loads once, in `__init__`."""


class RayRunner:
    """Starts a local Ray, or joins `address` (or `RAY_ADDRESS`).

    A local Ray starts without its dashboard (Ray's HTTP service) and with Ray's token authentication on: Ray
    (2.60) binds its GCS, raylet and worker gRPC ports to every interface and offers no setting to bind them to
    127.0.0.1 (it replaces a 127.0.0.1 node address by the node's own), so the token is what keeps other hosts out.
    A user who disabled it (`RAY_AUTH_MODE=disabled`) is warned.
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, progress: bool = True,
                 num_gpus: int | None = None) -> None:
        address = address or os.environ.get("RAY_ADDRESS")
        self._owned = not ray.is_initialized()
        if self._owned:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                require_token_auth()
                ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, log_to_driver=False)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = progress
        context.print_on_execution_start = False
        resources = ray.cluster_resources()
        self.cpus = int(resources.get("CPU", 1))
        self.gpus = float(resources.get("GPU", 0.0))

    def run(self, rows: list[R], stages: list[StageSpec], desc: str) -> Iterator[list[R]]:
        if not rows:
            return
        if not any(spec.actor for spec in stages):
            yield from self._tasks(rows, stages, desc)
            return
        row_type = type(rows[0])
        items = [{KEY: row.key, ROW: encode(row)} for row in rows]
        # A Ray Data task costs tens of milliseconds to schedule: give each a few rows (about four tasks per
        # CPU per phase), but never so many that one slow task holds the whole phase up.
        size = rows_per_task(len(items), self.cpus, tasks_per_cpu=4)
        dataset = ray.data.from_items(items, override_num_blocks=math.ceil(len(items) / size))
        # Consecutive task stages with the same CPU need fuse into one operator; every actor stage stands alone.
        for _, group in groupby(stages, key=lambda spec: ("actor", id(spec)) if spec.actor else spec.num_cpus):
            group = list(group)
            if group[0].actor:
                spec = group[0]
                dataset = dataset.map_batches(
                    StageActor,
                    fn_constructor_kwargs={"specs": group},
                    batch_size=size,
                    batch_format="numpy",
                    compute=ray.data.ActorPoolStrategy(size=spec.concurrency),
                    num_cpus=spec.num_cpus,
                    num_gpus=spec.num_gpus,
                    max_restarts=ATTEMPTS - 1,
                    max_task_retries=ATTEMPTS - 1,
                )
                continue
            dataset = dataset.map_batches(
                run_chain,
                fn_kwargs={"specs": group},
                batch_size=size,
                batch_format="numpy",
                compute=ray.data.TaskPoolStrategy(size=max(1, min(max(s.concurrency for s in group), self.cpus))),
                num_cpus=group[0].num_cpus,
                max_retries=ATTEMPTS - 1,
            )
        finished: set[str] = set()
        try:
            for batch in dataset.iter_batches(batch_size=8, batch_format="numpy"):
                out = from_batch(checked(batch), row_type)
                finished.update(row.key for row in out)
                yield out
        except ray.exceptions.RayError as exc:
            left = [row for row in rows if row.key not in finished]
            log.warning("%s: a worker died %d times (%s); running the %d unfinished rows one per task",
                        desc, ATTEMPTS, one_line(exc)[:200], len(left))
            yield from self._one_per_task(left, stages)

    def _tasks(self, rows: list[R], stages: list[StageSpec], desc: str) -> Iterator[list[R]]:
        """A phase of CPU stages only, on Ray core: each batch of rows is one task that runs the whole chain, with
        as many tasks in flight as the chain's concurrency (capped by the CPUs), the next submitted as soon as one
        returns.

        Ray Data's streaming executor cost about 0.2 s between two tasks of a worker on 2 cores, so its tasks had to
        carry several rows each, and one slow batch (six videos to matte) left the other worker idle for seconds at
        the end of a phase. Here a task costs milliseconds, so it carries one row unless the phase is large
        (`rows_per_task`). A batch whose worker died `ATTEMPTS` times has its rows run one per task (`crashed`).
        """
        size = rows_per_task(len(rows), self.cpus)
        num_cpus = max(spec.num_cpus for spec in stages)
        running = max(1, min(max(spec.concurrency for spec in stages), math.floor(self.cpus / num_cpus)))
        task = ray.remote(run_chain).options(num_cpus=num_cpus, max_retries=ATTEMPTS - 1)
        batches = iter([rows[start:start + size] for start in range(0, len(rows), size)])
        pending: dict[ray.ObjectRef, list[R]] = {}

        def submit() -> None:
            batch = next(batches, None)
            if batch is not None:
                pending[task.remote(to_batch(batch), stages)] = batch

        for _ in range(running):
            submit()
        done: list[R] = []  # rows back from their tasks, handed on `RESULT_ROWS` at a time (one manifest part each)
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            batch = pending.pop(ref)
            submit()
            try:
                done.extend(from_batch(checked(ray.get(ref)), type(batch[0])))
            except ray.exceptions.RayError as exc:
                if len(batch) == 1:
                    done.append(crashed(batch[0], stages, exc))
                else:
                    log.warning("%s: a worker died %d times (%s); running its %d rows one per task", desc, ATTEMPTS,
                                one_line(exc)[:200], len(batch))
                    for rows_back in self._one_per_task(batch, stages):
                        done.extend(rows_back)
            if len(done) >= RESULT_ROWS or not pending:
                yield done
                done = []

    def _one_per_task(self, rows: list[R], stages: list[StageSpec]) -> Iterator[list[R]]:
        """Each row in a task of its own, tried `ATTEMPTS` times; a row whose worker still dies is a failure row."""
        task = ray.remote(run_chain).options(max_retries=ATTEMPTS - 1, num_cpus=1,
                                             num_gpus=max(spec.num_gpus for spec in stages))
        pending = {task.remote(to_batch([row]), stages): row for row in rows}
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            row = pending.pop(ref)
            try:
                out = from_batch(checked(ray.get(ref)), type(row))
            except ray.exceptions.RayError as exc:
                out = [crashed(row, stages, exc)]
            yield out

    def close(self) -> None:
        """Shut down the local Ray this runner started (a joined cluster is left running)."""
        if self._owned and ray.is_initialized():
            ray.shutdown()

    def __enter__(self) -> RayRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


AUTH_ENV = "RAY_AUTH_MODE"


def require_token_auth() -> None:
    """Ray starts a local cluster with token authentication when `RAY_AUTH_MODE` is unset (it generates the token
    in ~/.ray/auth_token and sets the variable to `token`); warn when the user turned it off."""
    mode = os.environ.get(AUTH_ENV)
    if mode is not None and mode.lower() != "token":
        log.warning("%s=%s: the local Ray listens on every network interface without authentication; anyone who "
                    "can reach this machine can run code in it. Unset %s to require Ray's token.", AUTH_ENV, mode,
                    AUTH_ENV)


def checked(batch: Batch) -> Batch:
    """The batch, unless its stages could not be set up: then the build stops here with the reason."""
    reason = next((text for text in batch.get(SETUP_ERROR, ()) if text), None)
    if reason:
        raise StageSetupError(str(reason))
    return batch


def crashed(row: R, stages: list[StageSpec], exc: Exception) -> R:
    """The row, failed: its worker process died `ATTEMPTS` times (the failure names the first stage it ran)."""
    names = " + ".join(spec.name.value for spec in stages)
    message = (f"its worker process died {ATTEMPTS} times running {names} (a crash, not an exception: e.g. a native "
               f"library fault or out of memory): {one_line(exc)[:300]}")
    row.fail(Failure(stage=Stage(stages[0].name.value), error_class=type(exc).__name__, message=message))
    return row


def cluster_resources(address: str) -> dict[str, float]:
    """The total resources of the Ray cluster at `address` (for `doctor`); leaves no connection behind."""
    owned = not ray.is_initialized()
    if owned:
        ray.init(address=address, log_to_driver=False)
    try:
        return {name: float(value) for name, value in ray.cluster_resources().items()}
    finally:
        if owned:
            ray.shutdown()
