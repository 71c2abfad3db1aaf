"""`layerflow-data reproduce`: the whole system on its embedded defaults, end to end, with timings.

held-out demo source -> build -> filter -> train base, motion, content -> sample all four tasks -> classical
baseline -> eval (all four tasks, intervals, per family) -> report.

Held out for real: the demo's held-out profile gives every object and backdrop an identity (sidecar `group` and
`background_group`), the build's split goes by both, and `heldout_overlap` (written at the top of reproduce.json)
counts the held-out samples whose object or background some training sample shows: it must be 0.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from datagen.build import build
from datagen.config import BuildConfig
from datagen.demo import DemoProfile, make_demo_source
from datagen.runner import make_runner
from filters.apply import apply_policy
from filters.clip import ClipScorer, evenly_spaced, resolve_clip
from filters.policy import Policy
from filters.report import write_report
from layerflow_model.components import read_config
from layerflow_model.config import SampleSettings, Stage, TrainConfig, preset
from layerflow_model.data import ClipStore, crop, read_rows
from layerflow_model.evaluate import ExternalPredictions, TextScorer, evaluate, write_eval
from layerflow_model.layout import Task
from layerflow_model.logs import LOSS_LOG, LOSS_PLOT, write_loss_plot
from layerflow_model.sample import sample_to_folder
from layerflow_model.train import train
from manifests import identity
from manifests.dataset import open_dataset
from manifests.errors import ConfigError
from manifests.layers import Layer
from manifests.schema import GROUP_BACKGROUND, GROUP_FOREGROUND, SPLIT
from manifests.video_io import quantise, write_rgb_video, write_rgba_video
from recipes.baseline import classical_decomposition
from recipes.config import ReproduceConfig

# The demo dataset for the showcase: the demo's held-out profile (objects and backdrops in families, each with its
# identity), more copy-paste pairs than the `build` default (4 backgrounds per foreground), a quarter of the objects
# and of the backgrounds held out (a sample is held out when both of its are), and a seed whose draw leaves at least
# `ReproduceConfig.min_heldout` held-out samples (`reproduce` refuses to report on fewer). With seed 31: 31 held-out
# samples (28 copy-paste of 7 objects on 4 backgrounds, 2 decomposed clips, 1 layered image; families star, picture,
# blob and ring) and 112 training samples. The count moves with the draw (seeds 0-8 would hold out 12 to 41 samples,
# counted before the build); of the seeds 0-299 that hold out at least 30 (counted so), 31 leaves the most for
# training, and about as many held out as the eval's time allows.
BUILD_SEED = 31
VAL_FRACTION = 0.25
BACKGROUNDS_PER_FOREGROUND = 4
BUILD_SIZE = 64  # the toy model trains at 32x32; the dataset is built at 64x64 and resized on load
# Clips of 4 frames (0.5 s at 8 fps; the toy model crops 2 of them): the object is placed so that its path over
# the clip fits the frame, and a shorter path leaves it larger (about 9 % of the frame instead of 5 % with 16).
BUILD_FRAMES = 4


def reproduce(config: ReproduceConfig, progress: bool = True, log=print) -> dict:
    """Run every step under `config.out`; returns (and writes to OUT/reproduce.json) what each step produced."""

    out = Path(config.out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out} is not empty: reproduce starts from nothing, pick a new folder")
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    began = time.perf_counter()

    def timed(name: str):
        seconds[name] = round(time.perf_counter() - began - sum(seconds.values()), 1)
        log(f"[reproduce] {name}: {seconds[name]} s")

    # 1. Demo source (held-out profile) and dataset.
    source = out / "demo_source"
    make_demo_source(source, profile=DemoProfile.HELDOUT)
    timed("demo_source")
    dataset = out / "dataset"
    build_config = BuildConfig(size=(BUILD_SIZE, BUILD_SIZE), frames=BUILD_FRAMES, seed=BUILD_SEED,
                               val_fraction=VAL_FRACTION, backgrounds_per_foreground=BACKGROUNDS_PER_FOREGROUND)
    with make_runner(config.no_ray) as runner:
        summary = build(str(source), dataset, build_config, runner, clip=resolve_clip(build_config.clip))
    timed("build")
    # 2. Filter: the shipped policy, applied to the scores the build wrote (no model call).
    funnel = apply_policy(dataset, Policy.default())
    overlap = heldout_overlap(dataset)
    held_out = read_rows(dataset, "val")
    log(f"[reproduce] held out: {len(held_out)} kept samples, heldout_overlap {overlap}")
    if overlap or len(held_out) < config.min_heldout:
        raise ConfigError(f"the held-out split has {len(held_out)} kept samples (need {config.min_heldout}) and "
                          f"{overlap} that share an object or background with training (need 0)")
    timed("filter")

    # 3. Train the three stages, each starting from the last.
    model_config = preset("toy")
    runs = out / "runs"
    results = {}
    init = None
    for stage, steps, lr in ((Stage.BASE, config.base_steps, config.base_lr),
                             (Stage.MOTION, config.motion_steps, config.lora_lr),
                             (Stage.CONTENT, config.content_steps, config.lora_lr)):
        train_config = TrainConfig(manifest=str(dataset), out=str(runs / stage.value), stage=stage, init=init,
                                   steps=steps, batch_size=config.batch_size, lr=lr, warmup=min(50, steps // 4),
                                   ema=0.99, checkpoint_every=max(steps, 1), seed=config.seed,
                                   task_weights=dict(config.task_weights))
        result = train(train_config, model_config if stage is Stage.BASE else None, progress=progress)
        results[stage.value] = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()}
        init = str(result.checkpoint)
        timed(f"train_{stage.value}")
    checkpoint = Path(init)
    # The three stages' loss logs (runs/<stage>/loss.jsonl) drawn on one page.
    loss_plot = write_loss_plot({stage.value: runs / stage.value / LOSS_LOG for stage in Stage}, out / LOSS_PLOT)

    # 4. Sample the four tasks on the first held-out sample (its layers are the inputs).
    settings = SampleSettings(steps=config.sample_steps, cfg=config.cfg, seed=config.seed)
    samples = _sample_all(checkpoint, dataset, out / "samples", settings)
    timed("sample")

    # 5. The classical baseline on the held-out samples (weight-free matting of the blend and a temporal clean plate),
    # handed to the evaluator as predictions beside the untrained model and the trivial predictor.
    classical = classical_decomposition(dataset, held_out, progress=progress)
    timed("classical")
    scorer, no_scorer = text_scorer()
    eval_settings = replace(settings, steps=config.eval_steps, sampler=config.eval_sampler)
    result = evaluate(checkpoint, str(dataset), "val", eval_settings, progress=progress, seeds=config.eval_seeds,
                      predictions={"classical": ExternalPredictions(Task.DECOMPOSE, classical.predictions,
                                                                    classical.notes)},
                      text_scorer=scorer)
    if no_scorer:
        result.summary.setdefault("notes", {})["text_scorer"] = no_scorer
    write_eval(result, out / "eval")
    log(result.table())
    timed("eval")

    # 6. Dataset report.
    report = write_report(dataset)
    timed("report")

    record = {
        "out": str(out), "heldout_overlap": overlap,
        "seconds": {**seconds, "total": round(time.perf_counter() - began, 1)},
        "dataset": {"samples": summary["samples"], "funnel": funnel.as_text(), "heldout": len(held_out)},
        "train": results, "loss_plot": str(loss_plot), "checkpoint": str(checkpoint), "samples": samples,
        "eval": result.summary, "report": str(report), "config": asdict(config),
    }
    (out / "reproduce.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    (out / "eval" / "table.txt").write_text(result.table() + "\n")
    return record


def heldout_overlap(dataset: Path) -> int:
    """`manifests.identity.heldout_overlap` over every sample of the dataset (kept or not): the held-out samples that
    share an object or a background with some training sample."""
    table = open_dataset(dataset).manifest(columns=[SPLIT, GROUP_FOREGROUND, GROUP_BACKGROUND]).to_pylist()
    return identity.heldout_overlap((row[SPLIT], row[GROUP_FOREGROUND], row[GROUP_BACKGROUND]) for row in table)


def text_scorer() -> tuple[TextScorer | None, str | None]:
    """The CLIP text alignment eval scores generated layers with: the default open_clip model when its weights are on
    this machine (never downloaded here), else None and why."""
    choice = resolve_clip("auto")
    if choice.weights is None:
        return None, f"no CLIP text alignment: {choice.unavailable}"
    scorer = ClipScorer(choice.arch, choice.weights, tag=choice.tag)

    def score(frames: np.ndarray, caption: str) -> float:
        images = scorer.embed_images(frames[evenly_spaced(len(frames), 8)]).mean(axis=0)
        return float(images / np.linalg.norm(images) @ scorer.embed_texts([caption])[0])

    return score, None


def _sample_all(checkpoint: Path, dataset: Path, out: Path, settings) -> dict[str, dict[str, str]]:
    """Write each task's inputs (taken from the first val sample) as files, then sample from those files
    exactly as `layerflow-data sample --input` would."""

    config, _ = read_config(checkpoint)
    handle = open_dataset(dataset)
    rows = read_rows(handle, "val") or read_rows(handle, "train")
    if not rows:
        raise ConfigError(f"{dataset}: no kept samples to take sampling inputs from")
    row = rows[0]
    store = ClipStore(handle, config.height, config.width)
    layers = crop(store.layers(row), 0, config.frames)
    store.close()
    inputs = out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    files = {
        Task.DECOMPOSE: inputs / "blended.mp4",
        Task.BG2FG: inputs / "background.mp4",
        Task.FG2BG: inputs / "foreground.webm",
    }
    write_rgb_video(files[Task.DECOMPOSE], quantise(layers[Layer.BLENDED]), 8.0, crf=0)
    write_rgb_video(files[Task.BG2FG], quantise(layers[Layer.BACKGROUND]), 8.0, crf=0)
    rgba = np.concatenate([layers[Layer.FOREGROUND], layers[Layer.ALPHA][..., None]], axis=-1)
    write_rgba_video(files[Task.FG2BG], quantise(rgba), 8.0)
    captions = [row.captions[Layer.FOREGROUND], row.captions[Layer.BACKGROUND], row.captions[Layer.BLENDED]]
    written = {}
    for task in Task:
        written[task.value] = sample_to_folder(checkpoint, task, captions, out / task.value, files.get(task),
                                               settings, device="cpu")
    (inputs / "source.json").write_text(json.dumps({"sample_id": row.sample_id, "captions": captions}) + "\n")
    return written
