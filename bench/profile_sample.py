"""Where one sample's time goes: a build on the sequential runner under cProfile, its cost split into decode, matte,
clean plate, compose, encode, read-back, each score and CLIP.

Prints one JSON line: per part, the seconds per input (decode, matte, clean plate: done once per input) or per sample
(the rest) and its share of the build's wall time (`share`, the baseline every part is measured against: the same
build, in the same run). A table goes to stderr. Rates without the profiler: `bench/build_throughput.py`.

    python bench/profile_sample.py [--source demo|DIR] [--size 256x256] [--frames 16] [--fps 8] [--matting auto]
                                   [--kinds video_copy_paste,image_frozen]

The parts are the cumulative times of the functions that do them (`_stage_parts`), less the named parts nested in
them, so nothing is counted twice: `matte` is the matte stage without its clean plate, `compose` the compose stage
without its encoding, the `score_*` parts the pixel scores' own functions, and `read_back` decoding the written files
again to score them; `other_share` is the rest (planning, committing, Parquet, bookkeeping). CLIP is null (with why)
when no CLIP weights are on the machine. cProfile slows pure-Python code more than numpy, OpenCV and codec calls, so
read the shares with that in mind.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datagen.build import build  # noqa: E402
from datagen.config import BuildConfig, parse_size  # noqa: E402
from datagen.demo import make_demo_source  # noqa: E402
from datagen.pipeline import LocalRunner  # noqa: E402
from filters.clip import resolve_clip  # noqa: E402
from manifests.layers import SampleKind  # noqa: E402


def _stage_parts() -> dict[str, tuple[str, list, list]]:
    """part -> (per input or per sample, the functions whose cumulative time it is, the parts nested inside it that
    are named apart and taken off)."""
    from datagen import stages
    from filters import alpha, clip, ssim
    from manifests import io, metrics, video_io

    return {
        "decode": ("input", [stages.DecodeStage.process], []),
        "matte": ("input", [stages.MatteStage.process], ["clean_plate"]),
        "clean_plate": ("input", [stages.MatteStage._clean_plate], []),
        "compose": ("sample", [stages.ComposeStage.process], ["encode"]),
        "encode": ("sample", [video_io.write_rgb_video, video_io.write_alpha_video], []),
        "caption": ("sample", [stages.CaptionStage.process], []),
        "read_back": ("sample", [io.read_layers], []),
        "score_recompose": ("sample", [metrics.recomposition_psnr], []),
        "score_alpha": ("sample", [alpha.alpha_quality], []),
        "score_ssim": ("sample", [ssim.temporal_ssim], []),
        "clip": ("sample", [clip.clip_scores], []),
    }


def _key(function) -> tuple[str, int, str]:
    """cProfile's key of a function: (file, first line, name)."""
    code = function.__code__
    return code.co_filename, code.co_firstlineno, code.co_name


def cumulative(stats: pstats.Stats, functions: list) -> float:
    """Seconds spent inside any of `functions`, with what they call."""
    return sum(stats.stats[_key(f)][3] for f in functions if _key(f) in stats.stats)


def warm_up() -> None:
    """Load what the stages load on first use (torch and pytorch-msssim for SSIM, the codecs), so that one-time
    imports are not counted as a part's per-sample cost."""
    import numpy as np

    from filters.ssim import temporal_ssim
    from manifests.video_io import write_rgb_video

    temporal_ssim(np.zeros((2, 32, 32, 3), np.uint8))
    with tempfile.TemporaryDirectory() as tmp:
        write_rgb_video(Path(tmp) / "warm.mp4", np.zeros((2, 32, 32, 3), np.uint8), 8.0)


def profile(source: str, config: BuildConfig, out: Path) -> tuple[dict, pstats.Stats, float]:
    """The build's summary, its profile and its wall time under the profiler."""
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    summary = build(source, out, config, LocalRunner(progress=False), clip=resolve_clip(config.clip))
    profiler.disable()
    return summary, pstats.Stats(profiler), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="demo", help="demo (the built-in demo source) or a folder")
    parser.add_argument("--size", default="256x256")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--matting", default="auto")
    parser.add_argument("--kinds", default="video_copy_paste,image_frozen,video_decomposed")
    args = parser.parse_args()
    kinds = tuple(SampleKind(kind) for kind in args.kinds.split(","))
    config = BuildConfig(size=parse_size(args.size), frames=args.frames, fps=args.fps, matting=args.matting,
                         kinds=kinds, val_fraction=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = str(args.source)
        if source == "demo":
            make_demo_source(tmp / "src")
            source = str(tmp / "src")
        warm_up()
        summary, stats, profiled = profile(source, config, tmp / "profiled")
    inputs = summary["inputs"]["discovered"]
    samples = summary["samples"]["total"]
    named = _stage_parts()
    whole = {name: cumulative(stats, functions) for name, (_, functions, _) in named.items()}
    seconds = {name: whole[name] - sum(whole[inner] for inner in nested) for name, (_, _, nested) in named.items()}
    parts = {}
    for name, (per, _, _) in named.items():
        count = inputs if per == "input" else samples
        parts[name] = {"per": per, "seconds": round(seconds[name] / max(count, 1), 4),
                       "share": round(seconds[name] / profiled, 3)}
    clip = resolve_clip(config.clip)
    if clip.weights is None:
        parts["clip"] = {"per": "sample", "seconds": None, "share": None, "why": clip.unavailable}
    record = {
        "source": args.source, "size": args.size, "frames": args.frames, "fps": args.fps, "kinds": args.kinds,
        "inputs": inputs, "samples": samples, "profiled_seconds": round(profiled, 2),
        "baseline": "share: of the profiled build's wall time",
        "parts": parts, "other_share": round(1.0 - sum(seconds.values()) / profiled, 3),
    }
    print(json.dumps(record))
    for name, part in parts.items():
        value = "-" if part["seconds"] is None else f"{part['seconds']:.4f} s/{part['per']}  {part['share']:.1%}"
        print(f"{name:<16} {value}", file=sys.stderr)


if __name__ == "__main__":
    main()
