"""What a build accounts for: one end state (with its reason) per discovered input, a failure row for every input or
sample that could not be used, and the summary's counts, which add up.

The states that do not depend on the policy are decided here: `duplicate` (another input holds the same bytes or
content, and is built instead: `mark_copies` and discovery), `failed` (the input itself failed, or every sample it
took part in did) and `unused` (with why). An input in samples is `used` or `rejected` by the policy's decisions on
them, which `filters.apply.apply_policy` makes when it writes `inputs.parquet` (its only writer).
"""

from __future__ import annotations

import json
from collections import Counter

from datagen.config import BuildConfig
from datagen.plan import split_of
from datagen.rows import InputRow, SampleRow
from datagen.stages import can_be_foreground
from filters.apply import input_counts
from manifests import identity
from manifests.layers import InputKind, InputState, Stage
from manifests.schema import (
    DUPLICATE_OF,
    INPUT_ID,
    KIND,
    SAMPLE_ID,
    SCHEMA_VERSION,
    SPLIT,
    STATE,
    URI,
)

# What the summary reads of the manifest (not the embeddings, which would cost memory on a large dataset).
SUMMARY_COLUMNS = (SAMPLE_ID, KIND, SPLIT, "input_id_foreground", "input_id_background",
                   "matting_backend", "matting_model", "matting_weights_sha256", "captioner")


def mark_copies(inputs: list[InputRow]) -> None:
    """Inputs that decoded to the same content (`identity.same_content`: an mp4 and its own extracted frames, a
    re-encoded copy) are built once: the first in discovery order is kept, each later one becomes its duplicate.
    Compared within one family (clips, still images, RGBA images, layered images): a layered image is not the
    duplicate of its own background shown alone."""
    families: dict[str, list[InputRow]] = {}
    for row in inputs:
        if row.ok and row.fingerprint:
            family = "clip" if row.kind.is_video else row.kind.value
            families.setdefault(family, []).append(row)
    for rows in families.values():
        for row, first in zip(rows, identity.first_copies([row.fingerprint for row in rows])):
            if first is not None:
                original = rows[first]
                bits = identity.distance(row.fingerprint, original.fingerprint)
                row.mark_duplicate(original.input_id, f"the same content as {original.item.relative} (decoded frames "
                                                      f"within {bits} of 64 bits; built once, from there)")


def input_states(inputs: list[InputRow], samples: list[dict], sample_failures: list[SampleRow],
                 config: BuildConfig) -> list[dict]:
    """One `inputs.parquet` row per input, in its end state with the reason where it is not simply used: duplicate >
    in samples > failed > unused. An input in samples is `used` here; the policy makes it `rejected` if none of its
    samples is kept (`filters.apply.decide_input_states`)."""
    in_samples: dict[str, list[str]] = {}
    for sample in samples:
        for input_id in {sample["input_id_foreground"], sample["input_id_background"]}:
            in_samples.setdefault(input_id, []).append(sample[SAMPLE_ID])
    failed_samples = {row.fg.input_id: row for row in sample_failures}
    unused_why = _unused_reasons(inputs, bool(samples or sample_failures), config)
    out = []
    for row in inputs:
        state, stage, message = InputState.UNUSED, None, unused_why.get(row.input_id)
        if row.item.duplicate_of is not None:  # seen at discovery (same bytes) or after decoding (same content)
            state, message = InputState.DUPLICATE, row.item.duplicate_reason
            stage = Stage.DISCOVER if row.fingerprint is None else Stage.DECODE
        elif not row.ok:
            state, stage, message = InputState.FAILED, row.failure.stage, row.failure.message
        elif row.input_id in in_samples:
            state, message = InputState.USED, None
            if row.matte_error is not None:  # used, but only as a background: say why it was no foreground
                stage, message = Stage.MATTE, f"background only: {row.matte_error.message}"
            elif row.plate_error is not None:  # used, but not decomposed: say why
                stage, message = Stage.CLEAN_PLATE, f"no video_decomposed sample: {row.plate_error.message}"
        elif row.input_id in failed_samples:
            failure = failed_samples[row.input_id].failure
            state, stage, message = InputState.FAILED, failure.stage, failure.message
        elif row.matte_error is not None or row.plate_error is not None:
            failure = row.matte_error or row.plate_error
            state, stage, message = InputState.FAILED, failure.stage, failure.message
        out.append({
            INPUT_ID: row.input_id, URI: row.uri, KIND: row.kind.value, "role": row.item.role.value,
            "pool": row.item.pool, STATE: state.value, "stage": stage.value if stage else None, "message": message,
            "sample_ids": sorted(in_samples.get(row.input_id, [])), "source_frames": row.source_frames,
            "source_height": row.source_height, "source_width": row.source_width,
            "matting_backend": row.matting.name if row.matting else None,
            "matting_device": row.matting.device if row.matting else None,
            "camera_motion": json.dumps(row.camera_motion, sort_keys=True) if row.camera_motion else None,
            "relative_path": row.item.relative, "source_size": row.item.size, "source_version": row.item.version,
            "fingerprint": row.fingerprint, "group": row.item.group or row.fingerprint,
            "background_group": row.item.background_group, DUPLICATE_OF: row.item.duplicate_of,
        })
    return out


def _unused_reasons(inputs: list[InputRow], planned: bool, config: BuildConfig) -> dict[str, str]:
    """Why each usable input took part in no sample."""
    ok = [row for row in inputs if row.ok]
    foregrounds = [row for row in ok if can_be_foreground(row) and row.matte_error is None]
    out = {}
    for row in ok:
        if can_be_foreground(row) and row.matte_error is None:
            side = split_of((row.group,), config)
            if row.kind is InputKind.LAYERED_IMAGE and split_of((row.group, row.background_group), config) is None:
                out[row.input_id] = (f"its object ({row.group}, {side}) and its background ({row.background_group}, "
                                     f"{'train' if side == 'val' else 'val'}) fall on two sides of the split: a "
                                     "sample of both would show a held-out one in training")
            else:
                out[row.input_id] = (f"no background to put this foreground on (a video or a plain image whose "
                                     f"background identity is on its side of the split, {side})")
        elif not foregrounds:
            out[row.input_id] = ("no input can be a foreground to put in front of it (a video, an RGBA image or a "
                                 "layered-image folder)")
        elif planned:
            out[row.input_id] = ("not drawn as a background (each foreground takes --backgrounds-per-foreground, "
                                 "from backgrounds on its side of the split)")
        else:
            out[row.input_id] = "no sample was planned with it"
    return out


def nothing_made(inputs: list[InputRow], planned: int) -> str:
    """One line: why a build made no sample (its inputs' states and failures say it per input)."""
    if planned:
        return f"no samples: all {planned} planned samples failed (see failures.parquet)"
    ok = [row for row in inputs if row.ok]
    head = f"no samples: of {len(inputs)} inputs, {len(inputs) - len(ok)} failed"
    candidates = [row for row in ok if can_be_foreground(row)]
    if not candidates:
        kinds = Counter(row.kind.value for row in ok)
        usable = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items())) or "none usable"
        return (f"{head} and none can be a foreground (a video, an RGBA image or a layered-image folder; here: "
                f"{usable})")
    matted = [row for row in candidates if row.matte_error is None]
    if not matted:
        return f"{head}; none of the {len(candidates)} foreground candidates could be matted (see inputs.parquet)"
    return f"{head}; the {len(matted)} foreground(s) have no background to go on (a video or a plain image)"


def failure_rows(input_rows: list[dict], inputs: list[InputRow], sample_failures: list[SampleRow]) -> list[dict]:
    """A failure row per input that failed itself (at discover, decode or matte) and per sample that failed."""
    by_id = {row.input_id: row for row in inputs}
    failed_samples = {row.fg.input_id for row in sample_failures}
    rows = []
    for state in input_rows:
        if state[STATE] != InputState.FAILED.value or state[INPUT_ID] in failed_samples:
            continue
        source = by_id[state[INPUT_ID]]
        failure = source.failure if not source.ok else source.matte_error or source.plate_error
        rows.append({INPUT_ID: source.input_id, URI: source.uri, "stage": failure.stage.value,
                     "error_class": failure.error_class, "message": failure.message, SAMPLE_ID: None,
                     "related_uris": []})
    rows += [{INPUT_ID: row.fg.input_id, URI: row.fg.uri, "stage": row.failure.stage.value,
              "error_class": row.failure.error_class, "message": row.failure.message, SAMPLE_ID: row.sample_id,
              "related_uris": [row.bg.uri] if row.bg.uri != row.fg.uri else []}
             for row in sample_failures]
    return rows


def part_record(rows: list[SampleRow]) -> dict:
    """What the summary needs of a part's samples beyond the manifest: why scores are null, devices, timings."""
    unscored = Counter((column, why) for row in rows for column, why in row.unscored.items())
    devices = Counter(pair for row in rows for pair in row.devices.items())
    seconds: Counter[str] = Counter()
    for row in rows:
        seconds.update(row.seconds)
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
    """The summary's facts that do not depend on the policy (`apply_policy` adds the ones that do)."""
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
            "by_kind": dict(Counter(s[KIND] for s in samples)),
            "by_split": dict(Counter(s[SPLIT] for s in samples)),
        },
        "failures": {"total": len(failures), "by_stage": dict(Counter(f["stage"] for f in failures))},
        "backends": {
            "matting": {"requested": config.matting, "used": dict(matting_used),
                        "models": [{"backend": b, "model_id": m, "weights_sha256": w} for b, m, w in models]},
            "captioner": config.captioner,
            "captioner_used": dict(Counter(s["captioner"] for s in samples)),
        },
        "seconds": {k: round(v, 3) for k, v in sorted(seconds.items())},
    }
