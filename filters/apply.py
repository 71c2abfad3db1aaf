"""Apply a policy to a built dataset: the decision columns of the manifest, the input states, the summary's
policy facts and `policy.toml`. No model. The only writer of what depends on the decisions.

`build` ends with this step (handing over its input rows and summary, so each file is written once), and
`layerflow-data filter` runs it alone with another policy.
"""

from __future__ import annotations

import time
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq

from filters.policy import Decision, Funnel, Policy, funnel
from manifests import io, storage
from manifests.dataset import DatasetLike, open_dataset
from manifests.layers import InputState
from manifests.schema import (
    CLIP_EMBEDDING,
    DECISION_COLUMNS,
    KIND,
    MANIFEST_DIR,
    SAMPLE_ID,
    SAMPLE_SCHEMA,
    STATE,
)

POLICY_FILE = "policy.toml"  # the policy last applied, beside the manifest


def read_policy(dataset: DatasetLike) -> Policy:
    """The policy last applied to the dataset (`DS/policy.toml`, wherever the dataset lives); the shipped default if
    none was written."""
    dataset = open_dataset(dataset)
    text = dataset.read_text(POLICY_FILE)
    return Policy.default() if text is None else Policy.from_toml(text, source=storage.join(dataset.uri, POLICY_FILE))


def apply_policy(dataset: DatasetLike, policy: Policy, summary: dict | None = None,
                 inputs: list[dict] | None = None) -> Funnel:
    """Recompute the decision columns of every manifest part from the stored scores; return the funnel.

    A part is rewritten only if a decision in it changed. `summary` / `inputs` (a build's, not yet written): the
    summary and the `inputs.parquet` rows to decide and write; None reads the dataset's own. The summary is written
    last. A dataset on object storage is decided in its local mirror, and what changed is uploaded, summary last.
    """
    began = time.perf_counter()
    dataset = open_dataset(dataset)
    root = dataset.local_root()
    summary = io.read_summary(root) if summary is None else summary
    parts = sorted((root / MANIFEST_DIR).glob("part-*.parquet"))
    written = []
    tables = [pq.read_table(part, schema=SAMPLE_SCHEMA) for part in parts]
    score_columns = sorted({rule.score for rule in policy.rules} | {SAMPLE_ID, KIND})
    rows = [row for table in tables for row in table.select(score_columns).to_pylist()]
    embeddings = [e for table in tables for e in table.column(CLIP_EMBEDDING).to_pylist()] \
        if policy.duplicate_cosine is not None else None
    decisions = policy.apply(rows, embeddings)

    start = 0
    for part, table in zip(parts, tables):
        chosen = decisions[start:start + table.num_rows]
        start += table.num_rows
        decided = table
        for name in DECISION_COLUMNS:
            column = SAMPLE_SCHEMA.field(name)
            values = pa.array([getattr(decision, name) for decision in chosen], column.type)
            decided = decided.set_column(decided.schema.get_field_index(name), column, values)
        if not decided.select(list(DECISION_COLUMNS)).equals(table.select(list(DECISION_COLUMNS))):
            io.write_parquet_atomic(decided, part)
            written.append(f"{MANIFEST_DIR}/{part.name}")

    result = funnel(rows, decisions, policy, {k: v["why"] for k, v in summary.get("unscored", {}).items()},
                    embeddings)
    keep = {row[SAMPLE_ID]: d.keep for row, d in zip(rows, decisions)}
    input_rows = decide_input_states(io.read_inputs(root).to_pylist() if inputs is None else inputs, keep)
    io.write_inputs(root, input_rows)
    (root / POLICY_FILE).write_text(policy.text, encoding="utf-8")
    summary.update(policy_summary(policy, result, decisions))
    summary["samples"].update(kept=result.kept, rejected=result.total - result.kept)
    summary["inputs"] = input_counts(input_rows)
    summary.setdefault("seconds", {})["policy"] = round(time.perf_counter() - began, 3)
    io.write_json_atomic(summary, root / io.SUMMARY_FILE)
    if not dataset.is_local:
        for name in [*written, io.INPUTS_FILE, POLICY_FILE, io.SUMMARY_FILE]:
            storage.upload_file(root / name, storage.join(dataset.uri, name))
    return result


def decide_input_states(input_rows: list[dict], keep: dict[str, bool]) -> list[dict]:
    """An input that took part in samples is `used` if any of them is kept, else `rejected` (the other states do
    not depend on the policy)."""
    out = []
    for row in input_rows:
        if row[STATE] in (InputState.USED.value, InputState.REJECTED.value) and row["sample_ids"]:
            used = any(keep.get(sample_id, False) for sample_id in row["sample_ids"])
            row = {**row, STATE: (InputState.USED if used else InputState.REJECTED).value}
        out.append(row)
    return out


def input_counts(input_rows: list[dict]) -> dict[str, int]:
    """Inputs per end state, every state listed; `discovered` and `accounted` (their sum) beside them."""
    states = Counter(row[STATE] for row in input_rows)
    counts = {"discovered": len(input_rows), **{state.value: states.get(state.value, 0) for state in InputState}}
    counts["accounted"] = sum(counts[state.value] for state in InputState)
    return counts


def policy_summary(policy: Policy, result: Funnel, decisions: list[Decision]) -> dict:
    """The summary keys a policy decides."""
    return {
        "policy": {"source": policy.source, "file": POLICY_FILE, "funnel": result.as_dict()},
        "reject_reasons": dict(Counter(r for d in decisions for r in d.reject_reasons)),
        "flags": dict(Counter(f for d in decisions for f in d.flags)),
    }
