"""Evaluation on a split of a manifest: decomposition and generation metrics of a checkpoint, next to the
untrained model and a trivial predictor computed the same way.

Decomposition (given the blended clip): alpha IoU (threshold 0.5) and mean absolute error; foreground PSNR
inside the true foreground region; background PSNR inside the true foreground region (where the background
must be invented) and outside it. Generation (from the three captions): recomposition consistency, the PSNR
of the generated blend against alpha * fg + (1 - alpha) * bg of the generated layers.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from layerflow_model.components import Components, build, load_checkpoint
from layerflow_model.config import ConfigError, SampleSettings
from layerflow_model.data import ClipStore, crop, read_rows
from layerflow_model.layout import Layout, Task
from layerflow_model.sample import run_task
from manifests.dataset import open_dataset
from manifests.device import resolve_device
from manifests.layers import Layer
from manifests.metrics import alpha_iou, alpha_mae, foreground_mask, masked_psnr, recomposition_psnr

METRICS: dict[str, str] = {
    "alpha_iou": "decompose: IoU of predicted and true alpha >= 0.5, mean over frames (higher is better)",
    "alpha_mae": "decompose: mean absolute alpha error (lower is better)",
    "fg_psnr_inside": "decompose: foreground PSNR inside the true foreground region, dB",
    "bg_psnr_inside": "decompose: background PSNR inside the true foreground region (invented), dB",
    "bg_psnr_outside": "decompose: background PSNR outside the true foreground region, dB",
    "recompose_psnr": "generate: PSNR of the generated blend vs alpha*fg + (1-alpha)*bg of the generated layers, dB",
}
HIGHER_IS_BETTER = {name: name != "alpha_mae" for name in METRICS}
MODELS = ("trained", "untrained", "trivial")


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(x, dtype=np.float64) * 255.0, 0, 255)


def _masked_psnr(reference: np.ndarray, estimate: np.ndarray, mask: np.ndarray) -> float | None:
    """`manifests.metrics.masked_psnr` of 0..1 data, on the 0..255 scale."""
    return masked_psnr(_u8(reference), _u8(estimate), mask)


def decomposition_metrics(truth: dict[Layer, np.ndarray], predicted: dict[Layer, np.ndarray]) -> dict:
    inside = foreground_mask(truth[Layer.ALPHA])
    return {
        "alpha_iou": alpha_iou(predicted[Layer.ALPHA], truth[Layer.ALPHA]),
        "alpha_mae": alpha_mae(predicted[Layer.ALPHA], truth[Layer.ALPHA]),
        "fg_psnr_inside": _masked_psnr(truth[Layer.FOREGROUND], predicted[Layer.FOREGROUND], inside),
        "bg_psnr_inside": _masked_psnr(truth[Layer.BACKGROUND], predicted[Layer.BACKGROUND], inside),
        "bg_psnr_outside": _masked_psnr(truth[Layer.BACKGROUND], predicted[Layer.BACKGROUND], ~inside),
    }


def recomposition_consistency(layers: dict[Layer, np.ndarray]) -> float:
    """PSNR of the blended layer against alpha * fg + (1 - alpha) * bg, on the 0..255 scale."""
    return recomposition_psnr(*(_u8(layers[layer]) for layer in (Layer.FOREGROUND, Layer.ALPHA, Layer.BACKGROUND,
                                                                    Layer.BLENDED)))


def trivial_decomposition(blended: np.ndarray) -> dict[Layer, np.ndarray]:
    """The baseline any decomposition must beat: background = the input blend, alpha = 0 (foreground = blend)."""
    return {Layer.FOREGROUND: blended, Layer.ALPHA: np.zeros(blended.shape[:3], np.float32),
            Layer.BACKGROUND: blended, Layer.BLENDED: blended}


@dataclass
class EvalResult:
    summary: dict  # the JSON line
    per_sample: list[dict]

    def table(self) -> str:
        means = self.summary["metrics"]
        lines = [f"{'metric':<18}" + "".join(f"{m:>11}" for m in MODELS) + "   better"]
        for name in METRICS:
            cells = []
            for model in MODELS:
                value = means[model].get(name)
                cells.append(f"{value:>11.3f}" if value is not None else f"{'-':>11}")
            lines.append(f"{name:<18}" + "".join(cells) + ("   higher" if HIGHER_IS_BETTER[name] else "   lower"))
        return "\n".join(lines)


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(kept)) if kept else None


def evaluate(checkpoint: Path | str, manifest: str, split: str = "val", settings: SampleSettings | None = None,
             limit: int | None = None, device: str = "auto", untrained_seed: int = 12345,
             progress: bool = True) -> EvalResult:
    settings = settings or SampleSettings()
    began = time.perf_counter()
    dev = torch.device(resolve_device(device))
    trained, state = load_checkpoint(checkpoint, dev)
    config = trained.config
    if config.layout is not Layout.RGBA:
        raise ConfigError("eval measures alpha, so it needs an RGBA-layout checkpoint")
    untrained = build(config, dev, seed=untrained_seed)
    untrained = Components(config, untrained.model, trained.text, trained.latents)  # same frozen encoders
    dataset = open_dataset(manifest)  # resolved once, for the rows and for the media
    rows = read_rows(dataset, split)
    rows = [r for r in rows if r.num_frames >= config.frames or r.num_frames == 1]
    if limit:
        rows = rows[:limit]
    if not rows:
        raise ConfigError(f"{manifest}: no kept samples in the {split!r} split to evaluate on")
    store = ClipStore(dataset, config.height, config.width)
    per_sample = []
    for index, row in enumerate(tqdm(rows, desc="eval", unit="sample", disable=not progress)):
        truth = crop(store.layers(row), 0, config.frames)
        seeded = replace(settings, seed=settings.seed + index)
        record = {"sample_id": row.sample_id, "kind": row.kind.value}
        for name, parts in (("trained", trained), ("untrained", untrained)):
            decomposed = run_task(parts, Task.DECOMPOSE, row.captions, {Layer.BLENDED: truth[Layer.BLENDED]}, seeded)
            generated = run_task(parts, Task.GENERATE, row.captions, None, seeded)
            record[name] = {**decomposition_metrics(truth, decomposed),
                            "recompose_psnr": recomposition_consistency(generated)}
        record["trivial"] = {**decomposition_metrics(truth, trivial_decomposition(truth[Layer.BLENDED])),
                             "recompose_psnr": None}  # a trivial predictor generates nothing
        per_sample.append(record)
    store.close()
    metrics = {model: {name: _mean([r[model][name] for r in per_sample]) for name in METRICS} for model in MODELS}
    summary = {
        "checkpoint": state["path"], "step": state["step"], "manifest": str(manifest), "split": split,
        "samples": len(per_sample), "kinds": sorted({r["kind"] for r in per_sample}),
        "steps": settings.steps, "cfg": settings.cfg, "sampler": settings.sampler.value, "seed": settings.seed,
        "metrics": metrics, "beats": _beats(metrics), "seconds": round(time.perf_counter() - began, 1),
    }
    return EvalResult(summary, per_sample)


def _beats(metrics: dict) -> dict[str, dict[str, bool | None]]:
    """For each metric: does the trained model beat each baseline (None where a baseline has no value)?"""
    out = {}
    for name in METRICS:
        mine = metrics["trained"][name]
        out[name] = {}
        for other in ("untrained", "trivial"):
            theirs = metrics[other][name]
            if mine is None or theirs is None:
                out[name][other] = None
            else:
                out[name][other] = bool(mine > theirs if HIGHER_IS_BETTER[name] else mine < theirs)
    return out


def write_eval(result: EvalResult, out: Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result.summary, sort_keys=True) + "\n")
    (out / "eval_per_sample.json").write_text(json.dumps(result.per_sample, indent=1) + "\n")
    (out / "eval_table.txt").write_text(result.table() + "\n")
