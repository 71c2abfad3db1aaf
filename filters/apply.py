"""Apply a policy to a built dataset: rewrite `keep` and its reasons, the input states and the summary. No model.

`build` ends with this step, and `layerflow-data filter` runs it alone with another policy.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from filters.policy import Decision, Funnel, Policy, funnel
from manifests import io
from manifests.layers import InputState
from manifests.schema import INPUT_SCHEMA, MANIFEST_DIR, SAMPLE_SCHEMA

POLICY_FILE = "policy.toml"  # the policy last applied, beside the manifest
_DECISION_COLUMNS = ("keep", "reject_reasons", "flags", "duplicate_of")


def dataset_policy(root: str | Path) -> Policy:
    """The policy last applied to the dataset at `root` (the shipped default if none was written)."""
    path = Path(root) / POLICY_FILE
    return Policy.from_toml(path.read_text(encoding="utf-8"), source=str(path)) if path.is_file() else Policy.default()


def apply_policy(root: str | Path, policy: Policy) -> Funnel:
    """Recompute the decision columns of every manifest part from the stored scores; return the funnel."""
    root = Path(root)
    summary = io.read_summary(root)
    parts = sorted((root / MANIFEST_DIR).glob("part-*.parquet"))
    tables = [pq.read_table(part, schema=SAMPLE_SCHEMA) for part in parts]
    score_columns = sorted({rule.score for rule in policy.rules} | {"sample_id", "kind"})
    rows = [row for table in tables for row in table.select(score_columns).to_pylist()]
    embeddings = [e for table in tables for e in table.column("clip_embedding").to_pylist()] \
        if policy.duplicate_cosine is not None else None
    decisions = policy.apply(rows, embeddings)

    start = 0
    for part, table in zip(parts, tables):
        chosen = decisions[start:start + table.num_rows]
        start += table.num_rows
        values = {
            "keep": [d.keep for d in chosen], "reject_reasons": [d.reject_reasons for d in chosen],
            "flags": [d.flags for d in chosen], "duplicate_of": [d.duplicate_of for d in chosen],
        }
        for name in _DECISION_COLUMNS:
            index = table.schema.get_field_index(name)
            column = SAMPLE_SCHEMA.field(name)
            table = table.set_column(index, column, pa.array(values[name], column.type))
        io.write_parquet_atomic(table, part)

    result = funnel(rows, decisions, policy, {k: v["why"] for k, v in summary.get("unscored", {}).items()},
                    embeddings)
    keep = {row["sample_id"]: d.keep for row, d in zip(rows, decisions)}
    input_rows = _input_states(root, keep)
    (root / POLICY_FILE).write_text(policy.text, encoding="utf-8")
    summary.update(policy_summary(policy, result, decisions))
    summary["samples"].update(kept=result.kept, rejected=result.total - result.kept)
    if input_rows:
        summary["inputs"].update(input_counts(input_rows))
    io.write_json_atomic(summary, root / io.SUMMARY_FILE)
    return result


def _input_states(root: Path, keep: dict[str, bool]) -> list[dict]:
    """An input that took part in samples is `used` if any of them is kept, else `rejected`."""
    if not (root / io.INPUTS_FILE).exists():
        return []
    rows = io.read_inputs(root).to_pylist()
    for row in rows:
        if row["state"] in (InputState.USED.value, InputState.REJECTED.value) and row["sample_ids"]:
            used = any(keep.get(sample_id, False) for sample_id in row["sample_ids"])
            row["state"] = (InputState.USED if used else InputState.REJECTED).value
    io.write_parquet_atomic(pa.Table.from_pylist(rows, schema=INPUT_SCHEMA), root / io.INPUTS_FILE)
    return rows


def input_counts(input_rows: list[dict]) -> dict[str, int]:
    """Inputs per end state, every state listed; `discovered` and `accounted` (their sum) beside them."""
    states = Counter(row["state"] for row in input_rows)
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
