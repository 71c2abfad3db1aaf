"""What a build accounts for: one end state (with its reason) per discovered input, a failure row for every input or
sample that could not be used, and the summary counts, which add up.

The states that do not depend on the policy are decided here: `failed` (the input itself failed, or every sample it
took part in did), `unused` (with why), and "in samples". Whether an input in samples is `used` or `rejected` is the
policy's call (`filters.apply`), made from the samples' `keep`.
"""

from __future__ import annotations

from collections import Counter

from datagen.config import BuildConfig
from datagen.stages import OK, can_be_foreground
from filters.apply import input_counts
from manifests.layers import InputKind, InputState, Stage
from manifests.schema import SCHEMA_VERSION

# What the summary reads of the manifest (not the embeddings, which would cost memory on a large dataset).
SUMMARY_COLUMNS = ("sample_id", "kind", "split", "keep", "reject_reasons", "input_id_foreground", "input_id_background",
                   "matting_backend", "matting_model", "matting_weights_sha256", "captioner")


def input_states(inputs: list[dict], samples: list[dict], sample_failures: list[dict]) -> list[dict]:
    """One end state per input, with the reason where it is not simply used: used > rejected > failed > unused."""
    kept: dict[str, list[str]] = {}
    rejected: dict[str, list[str]] = {}
    for sample in samples:
        target = kept if sample["keep"] else rejected
        for input_id in {sample["input_id_foreground"], sample["input_id_background"]}:
            target.setdefault(input_id, []).append(sample["sample_id"])
    failed_samples = {row["fg"]["input_id"]: row for row in sample_failures}
    unused_why = _unused_reasons(inputs, bool(samples or sample_failures))
    out = []
    for row in inputs:
        input_id = row["input_id"]
        state, stage, message = InputState.UNUSED, None, unused_why.get(input_id)
        if row["status"] != OK:
            state, stage, message = InputState.FAILED, row["stage"], row["message"]
        elif input_id in kept or input_id in rejected:
            state, message = (InputState.USED if input_id in kept else InputState.REJECTED), None
            if row.get("matte_error"):  # used, but only as a background: say why it was no foreground
                stage, message = Stage.MATTE.value, f"background only: {row['matte_error']}"
        elif input_id in failed_samples:
            failure = failed_samples[input_id]
            state, stage, message = InputState.FAILED, failure["stage"], failure["message"]
        elif row.get("matte_error"):
            state, stage, message = InputState.FAILED, Stage.MATTE.value, row["matte_error"]
        out.append({
            "input_id": input_id, "uri": row["uri"], "kind": row["kind"], "role": row["role"], "pool": row["pool"],
            "state": state.value, "stage": stage, "message": message,
            "sample_ids": sorted(kept.get(input_id, []) + rejected.get(input_id, [])),
            "source_frames": row.get("source_frames"), "source_height": row.get("source_height"),
            "source_width": row.get("source_width"), "matting_backend": row.get("matting_backend"),
            "matting_device": row.get("matting_device"),
        })
    return out


def _unused_reasons(inputs: list[dict], planned: bool) -> dict[str, str]:
    """Why each usable input took part in no sample."""
    ok = [row for row in inputs if row["status"] == OK]
    foregrounds = [row for row in ok if can_be_foreground(row) and not row.get("matte_error")]
    out = {}
    for row in ok:
        if can_be_foreground(row) and not row.get("matte_error"):
            out[row["input_id"]] = "no background to put this foreground on (a video or a plain image)"
        elif not foregrounds:
            out[row["input_id"]] = ("no input can be a foreground to put in front of it (a video, an RGBA image or a "
                                    "layered-image folder)")
        elif planned:
            out[row["input_id"]] = "not drawn as a background (each foreground takes --backgrounds-per-foreground)"
        else:
            out[row["input_id"]] = "no sample was planned with it"
    return out


def nothing_made(inputs: list[dict], planned: int) -> str:
    """One line: why a build made no sample (its inputs' states and failures say it per input)."""
    ok = [row for row in inputs if row["status"] == OK]
    failed = len(inputs) - len(ok)
    head = f"no samples: of {len(inputs)} inputs, {failed} failed"
    if planned:
        return f"no samples: all {planned} planned samples failed (see failures.parquet)"
    candidates = [row for row in ok if can_be_foreground(row)]
    if not candidates:
        kinds = Counter(InputKind(row["kind"]).value for row in ok)
        usable = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items())) or "none usable"
        return (f"{head} and none can be a foreground (a video, an RGBA image or a layered-image folder; here: "
                f"{usable})")
    matted = [row for row in candidates if not row.get("matte_error")]
    if not matted:
        return f"{head}; none of the {len(candidates)} foreground candidates could be matted (see inputs.parquet)"
    return f"{head}; the {len(matted)} foreground(s) have no background to go on (a video or a plain image)"


def failure_rows(input_rows: list[dict], inputs: list[dict], sample_failures: list[dict]) -> list[dict]:
    """A failure row per input that failed itself (at discover, decode or matte) and per sample that failed."""
    by_id = {row["input_id"]: row for row in inputs}
    failed_samples = {row["fg"]["input_id"] for row in sample_failures}
    rows = []
    for state in input_rows:
        if state["state"] != InputState.FAILED.value or state["input_id"] in failed_samples:
            continue
        source = by_id[state["input_id"]]
        error_class = source.get("error_class") if source["status"] != OK else source.get("matte_error_class")
        rows.append({"input_id": state["input_id"], "uri": state["uri"], "stage": state["stage"],
                     "error_class": error_class or "InputError", "message": state["message"], "sample_id": None,
                     "related_uris": []})
    rows += [{"input_id": row["fg"]["input_id"], "uri": row["fg"]["uri"], "stage": row["stage"],
              "error_class": row["error_class"], "message": row["message"], "sample_id": row["sample_id"],
              "related_uris": [row["bg"]["uri"]] if row["bg"]["uri"] != row["fg"]["uri"] else []}
             for row in sample_failures]
    return rows


def part_record(rows: list[dict]) -> dict:
    """What the summary needs of a part's samples beyond the manifest: why scores are null, devices, timings."""
    unscored = Counter((column, why) for row in rows for column, why in row.get("unscored", {}).items())
    devices = Counter(pair for row in rows for pair in row.get("devices", {}).items())
    seconds: Counter[str] = Counter()
    for row in rows:
        seconds.update(row["seconds"])
    return {"unscored": [[column, why, count] for (column, why), count in sorted(unscored.items())],
            "devices": [[stage, device, count] for (stage, device), count in sorted(devices.items())],
            "seconds": dict(seconds)}


def device_summary(devices: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    """Per learned stage: the device its backend ran on -> rows (each backend reports what it really got)."""
    out: dict[str, dict[str, int]] = {}
    for (stage, device), count in sorted(devices.items()):
        out.setdefault(stage, {})[device] = count
    return out


def unscored_summary(unscored: Counter[tuple[str, str]]) -> dict[str, dict]:
    """Per score column: how many samples have it null, and the most common reason why."""
    out: dict[str, dict] = {}
    for (column, why), count in unscored.most_common():
        entry = out.setdefault(column, {"samples": 0, "why": why})
        entry["samples"] += count
    return dict(sorted(out.items()))


def make_summary(out: str, config: BuildConfig, runner: str, inputs: list[dict], samples: list[dict],
                 failures: list[dict], seconds: Counter) -> dict:
    matting_used = Counter(s["matting_backend"] for s in samples)
    models = sorted({(s["matting_backend"], s["matting_model"], s["matting_weights_sha256"]) for s in samples},
                    key=str)
    return {
        "schema_version": SCHEMA_VERSION,
        "out": out,
        "runner": runner,
        "config": config.to_dict(),
        "config_fingerprint": config.fingerprint(),
        "inputs": input_counts(inputs),
        "samples": {
            "total": len(samples),
            "kept": sum(1 for s in samples if s["keep"]),
            "rejected": sum(1 for s in samples if not s["keep"]),
            "by_kind": dict(Counter(s["kind"] for s in samples)),
            "by_split": dict(Counter(s["split"] for s in samples)),
        },
        "reject_reasons": dict(Counter(r for s in samples for r in s["reject_reasons"])),
        "failures": {"total": len(failures), "by_stage": dict(Counter(f["stage"] for f in failures))},
        "backends": {
            "matting": {"requested": config.matting, "used": dict(matting_used),
                        "models": [{"backend": b, "model_id": m, "weights_sha256": w} for b, m, w in models]},
            "captioner": config.captioner,
            "captioner_used": dict(Counter(s["captioner"] for s in samples)),
        },
        "seconds": {k: round(v, 3) for k, v in sorted(seconds.items())},
    }
