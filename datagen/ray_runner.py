"""The Ray Data runner: each stage is an actor pool (set up once per actor); the only module that imports Ray."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import ray

from datagen.build import StageSpec
from datagen.stages import from_batch


class RayRunner:
    """Starts a local Ray bound to 127.0.0.1 (no dashboard), or joins `address` (or `RAY_ADDRESS`)."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, progress: bool = True) -> None:
        address = address or os.environ.get("RAY_ADDRESS")
        self._owned = not ray.is_initialized()
        if self._owned:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                         _node_ip_address="127.0.0.1")
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = progress
        context.print_on_execution_start = False
        self.cpus = int(ray.cluster_resources().get("CPU", 1))

    def run(self, rows: list[dict], stages: list[StageSpec], desc: str) -> Iterator[list[dict]]:
        if not rows:
            return
        items = [{"key": row["key"], "row": json.dumps(row)} for row in rows]
        dataset = ray.data.from_items(items, override_num_blocks=len(items))
        for spec in stages:
            dataset = dataset.map_batches(
                spec.cls,
                fn_constructor_kwargs=spec.kwargs,
                batch_size=1,
                batch_format="numpy",
                concurrency=max(1, min(spec.concurrency, self.cpus)),
                num_cpus=spec.num_cpus,
            )
        for batch in dataset.iter_batches(batch_size=8, batch_format="numpy"):
            yield from_batch(batch)

    def close(self) -> None:
        if self._owned and ray.is_initialized():
            ray.shutdown()
