"""`inspect`: what was built, what was rejected, what failed — counts and a few rows, as plain data."""

from __future__ import annotations

from collections import Counter

from manifests.dataset import DatasetLike, open_dataset


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
        "by_kind": dict(Counter(s["kind"] for s in samples)),
        "by_split": dict(Counter(s["split"] for s in samples)),
        "by_keep": {"kept": sum(s["keep"] for s in samples), "rejected": sum(not s["keep"] for s in samples)},
        "reject_reasons": dict(Counter(r for s in samples for r in s["reject_reasons"])),
        "inputs": dict(Counter(i["state"] for i in inputs)),
        "inputs_by_kind": dict(Counter(i["kind"] for i in inputs)),
        "failures": [
            {"uri": f["uri"], "stage": f["stage"], "error": f"{f['error_class']}: {f['message']}"} for f in failures
        ],
        "examples": [
            {k: s[k] for k in ("sample_id", "kind", "split", "keep", "caption_blended", "recompose_psnr",
                               "alpha_coverage_mean", "matting_backend", "source_foreground", "source_background")}
            for s in samples[:examples]
        ],
        "backends": summary.get("backends", {}),
        "seconds": summary.get("seconds", {}),
    }
