"""Evaluation of a checkpoint on a split of a manifest: the four tasks, each given only what a user would give it,
over several sampling seeds, next to the untrained model, a trivial predictor and any external predictions, with
bootstrap intervals over samples and seeds, overall and per object family.

What a task is given: its clips (`layout.given_layers`) and the captions in `CAPTIONS_GIVEN`; a caption it is not
given is the empty prompt, the unconditional embedding the model learnt through prompt dropout. What each metric
measures, and which way is better, is in `METRICS`; `TRIVIAL` says what the trivial predictor outputs.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from layerflow_model.components import Components, build, load_checkpoint
from layerflow_model.config import ConfigError, ModelConfig, SampleSettings
from layerflow_model.data import ClipStore, Row, crop, fit, read_rows
from layerflow_model.layout import GREY, PROMPT_LAYERS, Layout, Task, given_layers, pack, prompts_for, unpack
from layerflow_model.sample import run_task
from manifests.dataset import open_dataset
from manifests.device import resolve_device
from manifests.identity import family_of
from manifests.layers import Layer
from manifests.metrics import (
    alpha_coverage,
    alpha_dtssd,
    alpha_gradient_error,
    alpha_iou,
    alpha_mae,
    alpha_sad,
    bootstrap_interval,
    foreground_mask,
    masked_psnr,
    masked_ssim,
    on_grey,
    recomposition_psnr,
)
from manifests.video_io import quantise

EVAL_SEEDS = 3  # sampling seeds per sample: the intervals cover the generator's noise as well as the samples
SAMPLED = ("trained", "untrained")  # the models that draw noise (every seed); the others are deterministic
MODELS = (*SAMPLED, "trivial")  # external predictions add their own names after these

TextScorer = Callable[[np.ndarray, str], float]
"""Text alignment: (T, H, W, 3) uint8 RGB frames and a caption -> a score, higher is closer (e.g. a CLIP cosine)."""


@dataclass(frozen=True)
class Metric:
    """What a metric measures, and which way is better (None: a reference value, neither)."""

    description: str
    better: Literal["higher", "lower"] | None


MEASURES: dict[str, Metric] = {
    "alpha_iou": Metric("IoU of predicted and true alpha >= 0.5, mean over frames", "higher"),
    "alpha_mae": Metric("mean absolute alpha error (0..1)", "lower"),
    "alpha_sad": Metric("sum of absolute alpha errors per frame, in thousands", "lower"),
    "alpha_grad": Metric("gradient error of the matte (its edges against the truth's), in thousands", "lower"),
    "alpha_dtssd": Metric("dtSSD: the matte's frame-to-frame change against the truth's, x100 (flicker)", "lower"),
    "fg_psnr_inside": Metric("foreground PSNR inside the true object, dB", "higher"),
    "fg_ssim_inside": Metric("foreground SSIM inside the true object", "higher"),
    "bg_psnr_inside": Metric("background PSNR inside the true object (where it must be invented), dB", "higher"),
    "bg_ssim_inside": Metric("background SSIM inside the true object (where it must be invented)", "higher"),
    "bg_psnr_outside": Metric("background PSNR outside the true object, dB", "higher"),
    "bg_ssim_outside": Metric("background SSIM outside the true object", "higher"),
    "given_exact": Metric("1 when the given layers come back bit-for-bit (as `pack`/`unpack` carry them), else 0",
                          "higher"),
    "recompose_psnr": Metric("PSNR of the output blend vs alpha*fg + (1-alpha)*bg of the output layers, dB (a "
                             "predictor that composes its blend from its layers scores 100 by construction)",
                             "higher"),
    "alpha_coverage": Metric("mean alpha of the output (compare with alpha_coverage_truth)", None),
    "alpha_coverage_truth": Metric("mean alpha of the true matte, for reference", None),
    "clip_foreground": Metric("text alignment of the foreground over mid-grey with the true foreground caption",
                              "higher"),
    "clip_background": Metric("text alignment of the background with the true background caption", "higher"),
    "clip_blended": Metric("text alignment of the blend with the true blended caption", "higher"),
}
TASK_METRICS: dict[Task, tuple[str, ...]] = {
    Task.GENERATE: ("recompose_psnr", "alpha_coverage", "alpha_coverage_truth", "clip_foreground",
                    "clip_background", "clip_blended"),
    Task.DECOMPOSE: ("alpha_iou", "alpha_mae", "alpha_sad", "alpha_grad", "alpha_dtssd", "fg_psnr_inside",
                     "fg_ssim_inside", "bg_psnr_inside", "bg_ssim_inside", "bg_psnr_outside", "bg_ssim_outside"),
    Task.FG2BG: ("given_exact", "bg_psnr_inside", "bg_ssim_inside", "bg_psnr_outside", "bg_ssim_outside",
                 "recompose_psnr"),
    Task.BG2FG: ("given_exact", "alpha_iou", "alpha_mae", "fg_psnr_inside", "recompose_psnr"),
}
METRICS: dict[tuple[Task, str], Metric] = {(task, name): MEASURES[name]
                                           for task, names in TASK_METRICS.items() for name in names}

# The captions a user has for each task; the others are left empty. A user decomposing a clip knows what the clip
# shows, not how a model should caption its layers.
CAPTIONS_GIVEN: dict[Task, tuple[Layer, ...]] = {
    Task.GENERATE: PROMPT_LAYERS,
    Task.DECOMPOSE: (Layer.BLENDED,),
    Task.FG2BG: (Layer.BACKGROUND, Layer.BLENDED),
    Task.BG2FG: (Layer.FOREGROUND, Layer.BLENDED),
}
TRIVIAL = ("decompose: alpha 0, foreground = background = the blend; fg2bg: a mid-grey background (the true "
           "background's mean colour would use what fg2bg is not given), the blend composed over it; bg2fg: alpha 0 "
           "and a mid-grey foreground, the blend = the background; generate: none (it makes nothing from text)")
NO_SCORER = "no CLIP scorer: evaluate was given no text_scorer, so text alignment is not measured"


@dataclass(frozen=True)
class ExternalPredictions:
    """Another method's outputs for one task, scored like the models' (deterministic: one value per sample).

    layers: sample id -> its predicted layers, colour (T, H, W, 3) and alpha (T, H, W), uint8 or float in [0, 1], at
    any resolution and with at least the model's frames; they are fitted as the truth is (`data.fit` to the model's
    size, then its first frames). A layer the task is given may be left out: the given one is passed through.
    notes: sample id -> why its prediction fell back (carried into its per-sample record).
    """

    task: Task
    layers: dict[str, dict[Layer, np.ndarray]]
    notes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", Task(self.task))


@dataclass(frozen=True)
class SampleScores:
    """The metric values of one sample: model -> task -> one {metric: value} per seed."""

    row: Row
    scores: dict[str, dict[Task, list[dict[str, float | None]]]]
    notes: dict[str, str]


@dataclass
class EvalResult:
    summary: dict  # the JSON line
    per_sample: list[dict]  # one record per evaluated sample

    def table(self) -> str:
        """Rows `task metric`, a column per model with its mean and 95 % interval, and which way is better."""
        metrics, models = self.summary["metrics"], self.summary["models"]
        header = ["metric", *models, "better"]
        rows = [[f"{task.value} {name}", *(_cell(metrics[model].get(task.value, {}).get(name)) for model in models),
                 metric.better or "-"] for (task, name), metric in METRICS.items()]
        widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
        lines = ["  ".join(text.ljust(width) if i == 0 else text.rjust(width)
                           for i, (text, width) in enumerate(zip(row, widths))) for row in (header, *rows)]
        s = self.summary
        lines.append(f"mean [low, high]: 95 % bootstrap interval over {s['samples']} samples x {s['seeds']} seeds "
                     f"(trivial and external predictions: 1); {s['steps']} steps, cfg {s['cfg']}, {s['sampler']}")
        return "\n".join(lines)


def _cell(stats: dict | None) -> str:
    if not stats or stats["mean"] is None:
        return "-"
    return f"{stats['mean']:.3g} [{stats['low']:.3g}, {stats['high']:.3g}]"


# --- what each task is given ------------------------------------------------------------------------------------


def task_captions(captions: dict[Layer, str], task: Task) -> dict[Layer, str]:
    """The captions `task` is given (`CAPTIONS_GIVEN`); the others are '' (the unconditional prompt)."""
    return {layer: (captions.get(layer) or "") if layer in CAPTIONS_GIVEN[task] else "" for layer in PROMPT_LAYERS}


def _listed(names: list[str], noun: str) -> str:
    """["a", "b", "c"], "clip" -> "the a, b and c clips"."""
    words = " and ".join(filter(None, [", ".join(names[:-1]), names[-1]]))
    return f"the {words} {noun}{'s' if len(names) > 1 else ''}"


def describe_inputs(layout: Layout) -> dict[str, str]:
    """Per task, in words, what eval gives the model, and which of those captions the model reads: the layout may
    blank a prompt whatever it is passed (decompose's blended prompt)."""
    out = {}
    for task in Task:
        passed = CAPTIONS_GIVEN[task]
        clips = [layer.value for layer in given_layers(layout, task)]
        text = ", ".join(([_listed(clips, "clip")] if clips else []) + [_listed([c.value for c in passed], "caption")])
        prompts = prompts_for({layer: "x" for layer in passed}, task)
        read = [layer.value for layer, prompt in zip(PROMPT_LAYERS, prompts) if prompt]
        blanked = [layer.value for layer in passed if layer.value not in read]
        if blanked:
            reads = _listed(read, "caption") if read else "no text"
            text += f" (the layout blanks the {' and '.join(blanked)} prompt of {task.value}: the model reads {reads})"
        out[task.value] = f"{task.value}: {text}"
    return out


def sample_seed(base: int, sample_id: str, k: int) -> int:
    """The noise seed of seed `k` of a sample, from the base seed and the sample id: a sample draws the same noise
    whichever other samples are evaluated, and every model and task draws it alike (paired comparisons)."""
    digest = hashlib.blake2b(f"{base}:{sample_id}:{k}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


# --- the metrics of one output ----------------------------------------------------------------------------------


def _scaled(x: np.ndarray) -> np.ndarray:
    """Layers in 0..1 -> float64 in 0..255, the scale of the PSNR and SSIM measures."""
    return np.clip(np.asarray(x, dtype=np.float64) * 255.0, 0, 255)


def matte_scores(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float | None]:
    """The matte against the true one: IoU, MAE and the video-matting benchmark measures."""
    return {"alpha_iou": alpha_iou(predicted, truth), "alpha_mae": alpha_mae(predicted, truth),
            "alpha_sad": alpha_sad(predicted, truth), "alpha_grad": alpha_gradient_error(predicted, truth),
            "alpha_dtssd": alpha_dtssd(predicted, truth)}


def region_scores(truth: np.ndarray, predicted: np.ndarray, prefix: str, regions: dict[str, np.ndarray]
                  ) -> dict[str, float | None]:
    """`{prefix}_psnr_{region}` and `{prefix}_ssim_{region}` of a colour layer over each (T, H, W) mask."""
    reference, estimate = _scaled(truth), _scaled(predicted)
    scores = {}
    for where, mask in regions.items():
        scores[f"{prefix}_psnr_{where}"] = masked_psnr(reference, estimate, mask)
        scores[f"{prefix}_ssim_{where}"] = masked_ssim(reference, estimate, mask)
    return scores


def recompose_score(layers: dict[Layer, np.ndarray]) -> float:
    """PSNR of the blended layer against alpha * fg + (1 - alpha) * bg of the same layers, on the 0..255 scale."""
    return recomposition_psnr(*(_scaled(layers[layer]) for layer in (Layer.FOREGROUND, Layer.ALPHA, Layer.BACKGROUND,
                                                                     Layer.BLENDED)))


def given_exact(output: dict[Layer, np.ndarray], given: dict[Layer, np.ndarray], task: Task) -> float:
    """1.0 when every layer `task` is given comes back bit-for-bit equal to `given`, else 0.0."""
    return float(all(np.array_equal(output[layer], given[layer]) for layer in given_layers(Layout.RGBA, task)))


def text_alignment(output: dict[Layer, np.ndarray], captions: dict[Layer, str], scorer: TextScorer | None
                   ) -> dict[str, float | None]:
    """`clip_<layer>`: the scorer's value for each captioned layer's frames (the foreground over mid-grey) and its
    true caption; None without a scorer or a caption."""
    if scorer is None:
        return {f"clip_{layer.value}": None for layer in PROMPT_LAYERS}
    frames = {Layer.FOREGROUND: on_grey(quantise(output[Layer.FOREGROUND]), quantise(output[Layer.ALPHA])),
              Layer.BACKGROUND: quantise(output[Layer.BACKGROUND]), Layer.BLENDED: quantise(output[Layer.BLENDED])}
    return {f"clip_{layer.value}": float(scorer(frames[layer], captions[layer])) if captions.get(layer) else None
            for layer in PROMPT_LAYERS}


def score(task: Task, truth: dict[Layer, np.ndarray], represented: dict[Layer, np.ndarray],
          output: dict[Layer, np.ndarray], captions: dict[Layer, str], scorer: TextScorer | None
          ) -> dict[str, float | None]:
    """The `TASK_METRICS` of one output of `task` against the truth (`represented`: the truth as `pack`/`unpack`
    carry it, what the given layers must come back as)."""
    inside = foreground_mask(truth[Layer.ALPHA])
    if task is Task.DECOMPOSE:
        return {**matte_scores(output[Layer.ALPHA], truth[Layer.ALPHA]),
                **region_scores(truth[Layer.FOREGROUND], output[Layer.FOREGROUND], "fg", {"inside": inside}),
                **region_scores(truth[Layer.BACKGROUND], output[Layer.BACKGROUND], "bg",
                                {"inside": inside, "outside": ~inside})}
    if task is Task.FG2BG:
        return {"given_exact": given_exact(output, represented, task),
                **region_scores(truth[Layer.BACKGROUND], output[Layer.BACKGROUND], "bg",
                                {"inside": inside, "outside": ~inside}),
                "recompose_psnr": recompose_score(output)}
    if task is Task.BG2FG:
        return {"given_exact": given_exact(output, represented, task),
                "alpha_iou": alpha_iou(output[Layer.ALPHA], truth[Layer.ALPHA]),
                "alpha_mae": alpha_mae(output[Layer.ALPHA], truth[Layer.ALPHA]),
                "fg_psnr_inside": masked_psnr(_scaled(truth[Layer.FOREGROUND]), _scaled(output[Layer.FOREGROUND]),
                                              inside),
                "recompose_psnr": recompose_score(output)}
    return {"recompose_psnr": recompose_score(output), "alpha_coverage": alpha_coverage(output[Layer.ALPHA]),
            "alpha_coverage_truth": alpha_coverage(truth[Layer.ALPHA]), **text_alignment(output, captions, scorer)}


# --- the predictors ---------------------------------------------------------------------------------------------


def trivial_output(task: Task, truth: dict[Layer, np.ndarray], represented: dict[Layer, np.ndarray]
                   ) -> dict[Layer, np.ndarray] | None:
    """What the trivial predictor outputs for `task` from its inputs only (see `TRIVIAL`); None for generate."""
    blend = truth[Layer.BLENDED]
    no_alpha = np.zeros(blend.shape[:3], np.float32)
    grey = np.full_like(blend, GREY)
    if task is Task.DECOMPOSE:
        return {Layer.FOREGROUND: blend, Layer.ALPHA: no_alpha, Layer.BACKGROUND: blend, Layer.BLENDED: blend}
    if task is Task.FG2BG:
        fg, alpha = represented[Layer.FOREGROUND], represented[Layer.ALPHA]
        return {Layer.FOREGROUND: fg, Layer.ALPHA: alpha, Layer.BACKGROUND: grey,
                Layer.BLENDED: alpha[..., None] * fg + (1.0 - alpha[..., None]) * grey}
    if task is Task.BG2FG:
        background = represented[Layer.BACKGROUND]
        return {Layer.FOREGROUND: grey, Layer.ALPHA: no_alpha, Layer.BACKGROUND: background,
                Layer.BLENDED: background}
    return None


def fit_prediction(x: np.ndarray, config: ModelConfig) -> np.ndarray:
    """A predicted layer fitted as the truth is: `data.fit` to the model's size (uint8 before it is scaled to [0, 1],
    as `ClipStore` does), float32 in [0, 1]."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return fit(x, config.height, config.width).astype(np.float32) / 255.0
    return fit(x.astype(np.float32), config.height, config.width)


def external_output(name: str, predictions: ExternalPredictions, row: Row, represented: dict[Layer, np.ndarray],
                    config: ModelConfig) -> dict[Layer, np.ndarray]:
    """The predicted layers of a sample at the model's size and frames, the given layers passed through where the
    prediction leaves them out."""
    fitted = {Layer(layer): fit_prediction(x, config) for layer, x in predictions.layers[row.sample_id].items()}
    short = [layer.value for layer, x in fitted.items() if len(x) < min(config.frames, row.num_frames)]
    missing = [layer.value for layer in Layer if layer not in fitted
               and layer not in given_layers(Layout.RGBA, predictions.task)]
    if short or missing:
        problem = f"fewer than {config.frames} frames in {short}" if short else f"no {missing} layer"
        raise ConfigError(f"predictions {name!r}: sample {row.sample_id} has {problem}")
    given = {layer: represented[layer] for layer in given_layers(Layout.RGBA, predictions.task)}
    return {**given, **crop(fitted, 0, config.frames)}


def check_predictions(predictions: dict[str, ExternalPredictions], rows: list[Row]) -> None:
    """Before any sampling: each external name is new and each predicts every evaluated sample."""
    for name, predicted in predictions.items():
        if name in MODELS:
            raise ConfigError(f"predictions: {name!r} is the name of a built-in model ({', '.join(MODELS)})")
        missing = [row.sample_id for row in rows if row.sample_id not in predicted.layers]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise ConfigError(f"predictions {name!r}: no {predicted.task.value} prediction for sample(s) "
                              f"{', '.join(missing[:5])}{more}")


# --- one sample -------------------------------------------------------------------------------------------------


def score_sample(row: Row, truth: dict[Layer, np.ndarray], sampled: dict[str, Components],
                 predictions: dict[str, ExternalPredictions], settings: SampleSettings, seeds: int,
                 scorer: TextScorer | None) -> SampleScores:
    """Every model on every task for one sample: the sampled models once per seed, the others once."""
    config = next(iter(sampled.values())).config
    represented = unpack(pack(truth, Layout.RGBA), Layout.RGBA)
    scores: dict[str, dict[Task, list[dict]]] = {}
    for name, parts in sampled.items():
        scores[name] = {task: [] for task in Task}
        for k in range(seeds):
            seeded = replace(settings, seed=sample_seed(settings.seed, row.sample_id, k))
            for task in Task:
                given = {layer: truth[layer] for layer in given_layers(config.layout, task)}
                output = run_task(parts, task, task_captions(row.captions, task), given, seeded)
                scores[name][task].append(score(task, truth, represented, output, row.captions, scorer))
    trivial = {task: trivial_output(task, truth, represented) for task in Task}
    scores["trivial"] = {task: [score(task, truth, represented, output, row.captions, scorer)]
                         for task, output in trivial.items() if output is not None}
    for name, predicted in predictions.items():
        output = external_output(name, predicted, row, represented, config)
        scores[name] = {predicted.task: [score(predicted.task, truth, represented, output, row.captions, scorer)]}
    notes = {name: predicted.notes[row.sample_id] for name, predicted in predictions.items()
             if row.sample_id in predicted.notes}
    return SampleScores(row, scores, notes)


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def sample_record(sample: SampleScores) -> dict:
    """The JSON record of one sample: who it is, each model's metric means over seeds, the per-seed values of the
    sampled models, and its notes."""
    row = sample.row
    metrics = {model: {task.value: {name: _mean([s[name] for s in per_seed]) for name in TASK_METRICS[task]}
                       for task, per_seed in tasks.items()} for model, tasks in sample.scores.items()}
    seeds = {model: {task.value: {name: [s[name] for s in per_seed] for name in TASK_METRICS[task]}
                     for task, per_seed in sample.scores[model].items()} for model in SAMPLED}
    return {"sample_id": row.sample_id, "kind": row.kind.value, "family": family_of(row.group_foreground),
            "group_foreground": row.group_foreground, "group_background": row.group_background,
            "metrics": metrics, "seeds": seeds, "notes": sample.notes}


# --- over samples -----------------------------------------------------------------------------------------------


def interval(values: np.ndarray) -> dict:
    """{mean, low, high, n} of a (samples, seeds) array with NaN where a metric does not apply; n: the samples with
    a value."""
    found = bootstrap_interval(values)
    if found is None:
        return {"mean": None, "low": None, "high": None, "n": 0}
    mean, low, high = found
    return {"mean": mean, "low": low, "high": high, "n": int(np.sum(~np.all(np.isnan(values), axis=1)))}


def _values(samples: list[SampleScores], model: str, task: Task, name: str) -> np.ndarray:
    """(samples, seeds) values of one metric, NaN where it does not apply."""
    return np.array([[np.nan if s[name] is None else s[name] for s in sample.scores[model][task]]
                     for sample in samples], np.float64)


def intervals(samples: list[SampleScores], models: list[str]) -> dict:
    """metrics[model][task][metric] = {mean, low, high, n} over `samples`, for the tasks each model does."""
    return {model: {task.value: {name: interval(_values(samples, model, task, name)) for name in TASK_METRICS[task]}
                    for task in Task if task in samples[0].scores[model]}
            for model in models}


def _compare(mine: dict, theirs: dict, better: str) -> dict[str, bool | None]:
    if mine["mean"] is None or theirs["mean"] is None:
        return {"better": None, "separated": None}
    wins = mine["mean"] > theirs["mean"] if better == "higher" else mine["mean"] < theirs["mean"]
    return {"better": bool(wins), "separated": bool(mine["low"] > theirs["high"] or mine["high"] < theirs["low"])}


def beats(metrics: dict) -> dict:
    """beats[task][metric][other]: does the trained model's mean beat `other`'s, and do their intervals not overlap
    (`separated`)? Only metrics with a better direction, only models that do the task."""
    out: dict = {}
    for (task, name), metric in METRICS.items():
        if metric.better is None:
            continue
        mine = metrics["trained"][task.value][name]
        for other, tasks in metrics.items():
            if other != "trained" and task.value in tasks:
                out.setdefault(task.value, {}).setdefault(name, {})[other] = _compare(mine, tasks[task.value][name],
                                                                                      metric.better)
    return out


def _why_none(name: str, scorer: TextScorer | None) -> str:
    if name.startswith("clip_"):
        return NO_SCORER if scorer is None else "None for a sample whose true caption of that layer is empty"
    if name.endswith("_inside"):
        return "None for a sample whose true object is absent from every frame (nothing inside)"
    if name.endswith("_outside"):
        return "None for a sample whose true object covers every pixel (nothing outside)"
    return "None for clips of fewer than 2 frames"  # alpha_dtssd, the only other metric that can be None


def summary_notes(metrics: dict, samples: int, scorer: TextScorer | None,
                  predictions: dict[str, ExternalPredictions]) -> dict[str, str]:
    """Why a metric is None for some samples (keyed `task metric`), what the trivial predictor and each external
    prediction are."""
    notes = {f"{task} {name}": _why_none(name, scorer) for tasks in metrics.values()
             for task, names in tasks.items() for name, stats in names.items() if stats["n"] < samples}
    notes["trivial"] = TRIVIAL
    for name, predicted in predictions.items():
        notes[name] = (f"external {predicted.task.value} predictions passed to evaluate; "
                       f"{len(predicted.notes)} fell back (see per_sample notes)")
    return notes


# --- the evaluation ---------------------------------------------------------------------------------------------


def _models(checkpoint: Path | str, device: str, untrained_seed: int) -> tuple[dict[str, Components], dict]:
    """The trained model and the same architecture untrained (sharing its frozen encoders), and the checkpoint."""
    dev = torch.device(resolve_device(device))
    trained, state = load_checkpoint(checkpoint, dev)
    if trained.config.layout is not Layout.RGBA:
        raise ConfigError("eval measures alpha, so it needs an RGBA-layout checkpoint")
    untrained = build(trained.config, dev, seed=untrained_seed)
    untrained = Components(trained.config, untrained.model, trained.text, trained.latents)
    return {"trained": trained, "untrained": untrained}, state


def evaluate(checkpoint: Path | str, manifest: str, split: str = "val", settings: SampleSettings | None = None,
             limit: int | None = None, device: str = "auto", untrained_seed: int = 12345,
             progress: bool = True, seeds: int = EVAL_SEEDS,
             predictions: dict[str, ExternalPredictions] | None = None,
             text_scorer: TextScorer | None = None) -> EvalResult:
    """Every task on the kept samples of `split` (the first `limit`), for the checkpoint, the untrained model, the
    trivial predictor and each of `predictions`; the sampled models with `seeds` noise seeds per sample."""
    settings, predictions = settings or SampleSettings(), predictions or {}
    if seeds < 1:
        raise ConfigError(f"seeds: must be >= 1, got {seeds}")
    began = time.perf_counter()
    sampled, state = _models(checkpoint, device, untrained_seed)
    config = sampled["trained"].config
    dataset = open_dataset(manifest)  # resolved once, for the rows and for the media
    rows = [r for r in read_rows(dataset, split) if r.num_frames >= config.frames or r.num_frames == 1]
    rows = rows[:limit or None]
    if not rows:
        raise ConfigError(f"{manifest}: no kept samples in the {split!r} split to evaluate on")
    check_predictions(predictions, rows)
    store = ClipStore(dataset, config.height, config.width)
    try:
        samples = [score_sample(row, crop(store.layers(row), 0, config.frames), sampled, predictions, settings, seeds,
                                text_scorer)
                   for row in tqdm(rows, desc="eval", unit="sample", disable=not progress)]
    finally:
        store.close()
    models = [*MODELS, *predictions]
    metrics = intervals(samples, models)
    families = Counter(family_of(sample.row.group_foreground) for sample in samples)
    summary = {
        "checkpoint": state["path"], "step": state["step"], "manifest": str(manifest), "split": split,
        "samples": len(samples), "kinds": dict(Counter(sample.row.kind.value for sample in samples)),
        "families": dict(sorted(families.items())), "models": models, "seeds": seeds, "seed": settings.seed,
        "steps": settings.steps, "cfg": settings.cfg, "sampler": settings.sampler.value,
        "inputs": describe_inputs(config.layout), "metrics": metrics,
        "by_family": {name: intervals([s for s in samples if family_of(s.row.group_foreground) == name], models)
                      for name in sorted(families)},
        "beats": beats(metrics), "notes": summary_notes(metrics, len(samples), text_scorer, predictions),
        "seconds": round(time.perf_counter() - began, 1),
    }
    return EvalResult(summary, [sample_record(sample) for sample in samples])


def write_eval(result: EvalResult, out: Path) -> None:
    """eval.json (the summary), eval_per_sample.json and eval_table.txt in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result.summary, sort_keys=True) + "\n")
    (out / "eval_per_sample.json").write_text(json.dumps(result.per_sample, indent=1) + "\n")
    (out / "eval_table.txt").write_text(result.table() + "\n")
