"""Throughput of the build's learned GPU stages on real videos: SAM 2 video matting (`sam2.1_hiera_b+`, random
weights) through `Sam2Matting`, and open_clip ViT-B-32 scoring (random weights) through `ClipScorer` / `clip_scores`,
each as frames/s and peak GPU memory, against the same stage on this machine's CPU.

    python bench/gpu_stages.py                 # one CUDA GPU (H100 / H200); every video under --data
    python bench/gpu_stages.py --tiny          # SAM 2 at 128 px, 4 frames at 64x64, CPU only (a smoke test)

Clips are decoded by the build's own decoder (`discover` + `decode`) at --size / --frames / --fps. The CPU baseline
runs SAM 2 on the first --cpu-frames frames of the first clip (it takes seconds a frame there) and CLIP on the first
whole sample (clip_scores embeds at most 8 frames a layer, as the build does). Frames/s count clip frames; SAM 2's
overlapping chunks (16 frames, 4 shared) pass over a 32-frame clip 1.25 times a frame, the 4-frame CPU run once
(`passes_per_frame`). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import open_clip  # noqa: E402

from datagen.config import BuildConfig, parse_size  # noqa: E402
from datagen.decode import decode  # noqa: E402
from datagen.matting.sam2_backend import Sam2Matting, chunk_ranges  # noqa: E402
from datagen.sources import discover  # noqa: E402
from datagen.video_clip import VideoClip  # noqa: E402
from filters.clip import ClipScorer, clip_scores  # noqa: E402
from manifests.device import torch_build  # noqa: E402
from manifests.errors import InputError  # noqa: E402
from manifests.layers import InputKind  # noqa: E402
from manifests.metrics import recompose  # noqa: E402

CAPTIONS = {"foreground": "a person or an animal", "background": "an empty scene", "blended": "a video frame"}


class Sample(NamedTuple):
    """The layers `clip_scores` reads: (T,H,W,3) uint8 RGB and (T,H,W) uint8 alpha."""

    foreground: np.ndarray
    alpha: np.ndarray
    background: np.ndarray
    blended: np.ndarray


def timed(fn, items: list, warm, device: str) -> tuple[float, list]:
    """Seconds for `fn` over `items` after one untimed warm-up call on `warm`, and the outputs."""
    fn(warm)
    if device == "cuda":
        torch.cuda.synchronize()
    began = time.perf_counter()
    outputs = [fn(item) for item in items]
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - began, outputs


def frames_of(items: list) -> int:
    return sum(len(item.frames) if isinstance(item, VideoClip) else len(item.blended) for item in items)


def passes(clips: list[VideoClip]) -> float:
    """SAM 2 frame passes per clip frame (the default chunks overlap, so some frames are seen twice)."""
    ranges = [r for clip in clips for r in chunk_ranges(clip.num_frames, Sam2Matting.chunk, Sam2Matting.overlap)]
    return round(sum(stop - start for start, stop in ranges) / frames_of(clips), 3)


def head(clip: VideoClip, count: int) -> VideoClip:
    return VideoClip(clip.frames[:count], None if clip.alpha is None else clip.alpha[:count], fps=clip.fps)


def load_clips(data: Path, config: BuildConfig, limit: int | None) -> tuple[list[VideoClip], list[str], dict[str, str]]:
    """The decoded clips of every video source under `data` (its `videos/` folder when there is one)."""
    data = data.resolve()  # discovery gives absolute paths
    root = data / "videos" if (data / "videos").is_dir() else data
    clips, names, skipped = [], [], {}
    for item in discover(str(root)):
        if item.kind not in (InputKind.VIDEO, InputKind.FRAME_FOLDER) or (limit and len(clips) >= limit):
            continue
        try:
            if item.error:
                raise InputError(item.error)
            clips.append(decode(item, config).clip)
            names.append(str(Path(item.uri).relative_to(root)))
        except InputError as exc:
            skipped[str(Path(item.uri).relative_to(root))] = str(exc)
    return clips, names, skipped


def measure(make, inputs: list, warm, cpu_inputs: list, cpu_warm, cuda: bool) -> tuple[dict, list]:
    """Figures for one stage: `make(device)` builds it, timed on `inputs` (GPU) and `cpu_inputs` (CPU)."""
    figures, outputs = {}, []
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        stage = make("cuda")
        seconds, outputs = timed(stage, inputs, warm, "cuda")
        gpu_rate = frames_of(inputs) / seconds
        figures["gpu_frames_per_s"] = round(gpu_rate, 2)
        figures["gpu_peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        del stage
        torch.cuda.empty_cache()
    stage = make("cpu")
    seconds, cpu_outputs = timed(stage, cpu_inputs, cpu_warm, "cpu")
    cpu_rate = frames_of(cpu_inputs) / seconds
    figures["cpu_frames_per_s"] = round(cpu_rate, 3)
    figures["cpu_frames_timed"] = frames_of(cpu_inputs)
    if cuda:
        figures["gpu_vs_cpu"] = round(gpu_rate / cpu_rate, 1)
    else:
        figures.update(gpu_frames_per_s=None, gpu_peak_mem_gib=None, gpu_vs_cpu=None)
    return figures, outputs or cpu_outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="SAM 2 at 128 px, 4 frames at 64x64, CPU (smoke test)")
    parser.add_argument("--data", default=os.environ.get("LAYERFLOW_TEST_DATA", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--frames", type=int, default=32, help="frames per clip")
    parser.add_argument("--size", default="480x854", help="height x width, e.g. 480x854 or 256x256")
    parser.add_argument("--fps", type=float, default=24.0)
    parser.add_argument("--cpu-frames", type=int, default=4, help="frames SAM 2 is timed over on the CPU")
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not args.tiny
    if not cuda and not args.tiny:
        sys.exit(f"gpu_stages: no CUDA GPU visible ({torch_build()}); run it on a GPU machine, or pass --tiny")
    if args.tiny:
        args.frames, args.size, args.cpu_frames = 4, "64x64", 4
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(threads)  # every core this process may use, for the CPU baseline

    config = BuildConfig(frames=args.frames, fps=args.fps, size=parse_size(args.size))
    clips, names, skipped = load_clips(Path(args.data), config, limit=1 if args.tiny else None)
    if not clips:
        sys.exit(f"gpu_stages: no decodable video under {args.data} (skipped: {skipped})")
    cpu_clips = [head(clips[0], args.cpu_frames)]
    overrides = ("++model.image_size=128",) if args.tiny else ()

    def matting(device: str) -> Sam2Matting:
        return Sam2Matting(model="sam2.1_hiera_b+:random", device=device, hydra_overrides=overrides)  # benchmark only

    sam2, mattes = measure(matting, clips, clips[0], cpu_clips, head(clips[0], 1), cuda)
    matted = clips if cuda else cpu_clips
    samples = []
    for index, (clip, matte) in enumerate(zip(matted, mattes)):
        alpha = np.rint(matte.alpha * 255).astype(np.uint8)
        other = matted[(index + 1) % len(matted)].frames if len(matted) > 1 else clip.frames[:, :, ::-1]
        blended = np.rint(recompose(clip.frames, alpha, other)).astype(np.uint8)
        samples.append(Sample(clip.frames, alpha, np.ascontiguousarray(other), blended))

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        weights = Path(tmp) / "vitb32.pt"
        torch.save(open_clip.create_model("ViT-B-32").state_dict(), weights)

        def scorer(device: str):
            model = ClipScorer("ViT-B-32", weights, device=device)
            return lambda sample: clip_scores(model, *sample, CAPTIONS)

        scoring, _ = measure(scorer, samples, samples[0], samples[:1], samples[0], cuda)

    why = None if cuda else ("--tiny runs on the CPU only" if torch.cuda.is_available() else "no CUDA device")
    for figures in (sam2, scoring):
        figures["why_no_gpu"] = why
    sam2.update(model="sam2.1_hiera_b+ (random weights)", image_size=128 if args.tiny else 1024,
                passes_per_frame={"gpu": passes(clips) if cuda else None, "cpu": passes(cpu_clips)})
    scoring.update(model="open_clip ViT-B-32 (random weights)")
    print(json.dumps({
        "bench": "gpu_stages", "tiny": args.tiny, "device": torch.cuda.get_device_name() if cuda else "cpu",
        "videos": len(clips), "video_names": names, "skipped": skipped, "frames_per_clip": args.frames,
        "size": "x".join(map(str, config.size)), "fps": args.fps, "cpu_threads": threads,
        "versions": {"torch": torch.__version__, "sam2": importlib.metadata.version("sam2"),
                     "open_clip": open_clip.__version__},
        "stages": {"sam2_matting": sam2, "clip_scoring": scoring},
        "baseline": "the same stage on this machine's CPU", "command": shlex.join(sys.orig_argv),
    }, sort_keys=True))


if __name__ == "__main__":
    main()
