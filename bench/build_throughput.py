"""Demo-build throughput: the Ray runner against a plain sequential Python loop over the same stages.

Prints one JSON line: samples/minute for both, and `ratio` = ray / sequential (baseline: the
sequential loop, `datagen.pipeline.LocalRunner`). Ray start-up is reported apart from the build (`ratio`), and counted
in `ratio_with_init`.

The workload is pinned: the demo source and `--kinds video_copy_paste,image_frozen` (the kinds the demo made when
this bench's figures were first taken) with no `val` share (`val_fraction=0`: since the split holds out backgrounds too,
a held-out foreground pairs only with held-out backgrounds, which would drop pairs of the pinned workload), so a new
sample kind, a new split rule or a bigger demo does not move what it measures. Both
runners run the same stage classes with the same thread settings: one intra-op thread for torch and OpenCV in each
process (`threads`: a Ray task holds one CPU and its stages use that one; the sequential loop is pinned to the same,
so `ratio` compares the runners per core and is bounded by the core count; the codecs are single-threaded in both).

    python bench/build_throughput.py [--copies 1] [--concurrency 2] [--size 256x256] [--frames 16]

`--copies N` builds N demo sources (seeds 0..N-1) side by side, to see throughput past start-up.
`ray_warm` repeats the Ray build in the same Ray session: the rate a long build settles at.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datagen.build import build  # noqa: E402
from datagen.config import BuildConfig, parse_size  # noqa: E402
from datagen.demo import make_demo_source  # noqa: E402
from datagen.pipeline import LocalRunner  # noqa: E402
from datagen.scheduling import Resources  # noqa: E402
from manifests.layers import SampleKind  # noqa: E402

PINNED_KINDS = (SampleKind.VIDEO_COPY_PASTE, SampleKind.IMAGE_FROZEN)
THREADS = 1  # intra-op threads per process, both runners (see above)


def timed_build(source: Path, out: Path, config: BuildConfig, runner, concurrency: int) -> dict:
    start = time.perf_counter()
    summary = build(str(source), out, config, runner, resources=Resources(concurrency=concurrency))
    seconds = time.perf_counter() - start
    samples = summary["samples"]["total"]
    return {"samples": samples, "seconds": round(seconds, 2), "samples_per_minute": round(60 * samples / seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--size", default="256x256")
    parser.add_argument("--frames", type=int, default=16)
    args = parser.parse_args()
    config = BuildConfig(size=parse_size(args.size), frames=args.frames, kinds=PINNED_KINDS, val_fraction=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for seed in range(args.copies):
            make_demo_source(tmp / "src" / f"demo_{seed}", seed=seed)
        sequential = timed_build(tmp / "src", tmp / "seq", config, LocalRunner(progress=False, threads=THREADS),
                                 args.concurrency)

        from datagen.ray_runner import RayRunner

        start = time.perf_counter()
        runner = RayRunner(progress=False)
        ray_init = time.perf_counter() - start
        try:
            distributed = timed_build(tmp / "src", tmp / "ray", config, runner, args.concurrency)
            warm = timed_build(tmp / "src", tmp / "ray_warm", config, runner, args.concurrency)
        finally:
            runner.close()
    print(json.dumps({
        "bench": "build_throughput",
        "cpus": os.cpu_count(),
        "copies": args.copies,
        "concurrency": args.concurrency,
        "size": args.size,
        "frames": args.frames,
        "kinds": [kind.value for kind in PINNED_KINDS],
        "baseline": "sequential Python loop over the same stage classes (LocalRunner)",
        "threads_per_process": THREADS,
        "sequential": sequential,
        "ray": {**distributed, "ray_init_seconds": round(ray_init, 2)},
        "ray_warm": warm,
        "ratio": round(distributed["samples_per_minute"] / sequential["samples_per_minute"], 3),
        "ratio_warm": round(warm["samples_per_minute"] / sequential["samples_per_minute"], 3),
        "ratio_with_init": round(sequential["seconds"] / (distributed["seconds"] + ray_init), 3),
    }))


if __name__ == "__main__":
    main()
