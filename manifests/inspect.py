"""`inspect`: what was built, what was rejected, what failed — counts and a few rows, as plain data."""

from __future__ import annotations

from collections import Counter

from manifests.dataset import DatasetLike, open_dataset
from manifests.schema import (
    ADAPTER,
    KEEP,
    KIND,
    LAYERS_SOURCE,
    RECOMPOSE_PSNR,
    REJECT_REASONS,
    SAMPLE_ID,
    SOURCE_COMPANIONS,
    SOURCE_COMPOSITE_PSNR,
    SPLIT,
)

UNRECORDED = "unrecorded"  # the adapter of a sample written before schema 4


def inspect_dataset(dataset: DatasetLike, examples: int = 3) -> dict:
    """The counts and `examples` sample rows of the dataset (a folder, a pyarrow filesystem URI or an open handle)."""
    dataset = open_dataset(dataset)
    samples = dataset.manifest().to_pylist()
    summary = dataset.summary()
    failures = dataset.failures().to_pylist()
    inputs = dataset.inputs().to_pylist()
    return {
        "root": dataset.uri,
        "samples": len(samples),
        "by_kind": dict(Counter(s[KIND] for s in samples)),
        "by_adapter": dict(Counter(s[ADAPTER] or UNRECORDED for s in samples)),
        "by_split": dict(Counter(s[SPLIT] for s in samples)),
        "by_keep": {"kept": sum(s[KEEP] for s in samples), "rejected": sum(not s[KEEP] for s in samples)},
        REJECT_REASONS: dict(Counter(r for s in samples for r in s[REJECT_REASONS])),
        "inputs": dict(Counter(i["state"] for i in inputs)),
        "inputs_by_kind": dict(Counter(i[KIND] for i in inputs)),
        "failures": [
            {"uri": f["uri"], "stage": f["stage"], "error": f"{f['error_class']}: {f['message']}"} for f in failures
        ],
        "examples": [
            {k: s[k] for k in (SAMPLE_ID, KIND, ADAPTER, SPLIT, KEEP, "caption_blended", RECOMPOSE_PSNR,
                               "alpha_coverage_mean", "matting_backend", "source_foreground", "source_background",
                               LAYERS_SOURCE, SOURCE_COMPANIONS, SOURCE_COMPOSITE_PSNR)}
            for s in samples[:examples]
        ],
        "backends": summary.get("backends", {}),
        "seconds": summary.get("seconds", {}),
    }
