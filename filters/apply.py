"""Apply a policy to a built dataset: the decision columns of the manifest, the input states, the summary's
policy facts and `policy.toml`. No model. The only writer of what depends on the decisions.

`build` ends with this step (handing over its input rows and summary, so each file is written once), and
`layerflow-data filter` runs it alone with another policy.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from filters.duplicates import embedding_matrix
from filters.policy import Funnel, Outcome, Policy, RuleHits
from manifests import io, storage
from manifests.dataset import DatasetLike, open_dataset
from manifests.errors import DatasetError
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

    The parts are read one at a time, only the columns the policy reads and the decisions; then a part whose
    decisions changed is read again (all but the embeddings, which are in memory by then) and rewritten.
    `summary` / `inputs` (a build's, not yet written): the summary and the `inputs.parquet` rows to decide and
    write; None reads the dataset's own. The summary is written last. A dataset on object storage is decided in its
    local mirror, and what changed is uploaded, summary last.
    """
    began = time.perf_counter()
    dataset = open_dataset(dataset)
    root = dataset.local_root()
    summary = io.read_summary(root) if summary is None else summary
    parts = sorted((root / MANIFEST_DIR).glob("part-*.parquet"))
    read = read_parts(parts, policy)
    matrix, present = (None, None) if read.embeddings is None else (read.embeddings.matrix, read.embeddings.present)
    outcome = policy.outcome(read.hits, read.sample_ids, matrix, present)

    written, start = [], 0
    for part, before in zip(parts, read.decisions):
        stop = start + before.num_rows
        after = outcome.columns(start, stop)
        if not all(before.column(name).equals(pa.chunked_array([after[name]])) for name in DECISION_COLUMNS):
            if read.embeddings is None:
                table = io.read_part(part)
            else:
                table = io.read_part(part, [name for name in SAMPLE_SCHEMA.names if name != CLIP_EMBEDDING])
                table = table.add_column(SAMPLE_SCHEMA.get_field_index(CLIP_EMBEDDING),
                                         SAMPLE_SCHEMA.field(CLIP_EMBEDDING), read.embeddings.column(start, stop))
            for name in DECISION_COLUMNS:
                table = table.set_column(table.schema.get_field_index(name), SAMPLE_SCHEMA.field(name), after[name])
            io.write_parquet_atomic(table, part)
            written.append(f"{MANIFEST_DIR}/{part.name}")
            del table
            pa.default_memory_pool().release_unused()
        start = stop
    del read, matrix, present

    result = outcome.funnel({k: v["why"] for k, v in summary.get("unscored", {}).items()})
    input_rows = io.read_inputs(root).to_pylist() if inputs is None else inputs
    keep = dict(zip(outcome.sample_ids.to_pylist(), outcome.keep.tolist())) if input_rows else {}
    input_rows = decide_input_states(input_rows, keep)
    io.write_inputs(root, input_rows)
    (root / POLICY_FILE).write_text(policy.text, encoding="utf-8")
    summary.update(policy_summary(policy, result, outcome))
    summary["samples"].update(kept=result.kept, rejected=result.total - result.kept)
    summary["inputs"] = input_counts(input_rows)
    summary.setdefault("seconds", {})["policy"] = round(time.perf_counter() - began, 3)
    io.write_json_atomic(summary, root / io.SUMMARY_FILE)
    if not dataset.is_local:
        for name in [*written, io.INPUTS_FILE, POLICY_FILE, io.SUMMARY_FILE]:
            storage.upload_file(root / name, storage.join(dataset.uri, name))
    return result


@dataclass
class PartsRead:
    """What a policy needs from the manifest parts, in part order."""

    hits: RuleHits
    sample_ids: pa.ChunkedArray
    decisions: list[pa.Table]  # each part's stored decision columns
    embeddings: Embeddings | None  # None: the policy has no near-duplicate rule


def read_parts(parts: list[Path], policy: Policy) -> PartsRead:
    """The manifest parts, one at a time, only the columns the policy reads and its decision columns."""
    rows = sum(pq.read_metadata(part).num_rows for part in parts)
    scores = sorted({rule.score for rule in policy.rules})
    wants_embeddings = policy.duplicate_cosine is not None
    columns = [SAMPLE_ID, KIND, *scores, *DECISION_COLUMNS, *([CLIP_EMBEDDING] if wants_embeddings else [])]
    hits, ids, decisions = [], [], []
    embeddings = Embeddings(rows) if wants_embeddings else None
    for part in parts:
        table = io.read_part(part, columns)
        hits.append(policy.hits(table))
        ids.extend(table.column(SAMPLE_ID).chunks)
        decisions.append(table.select(list(DECISION_COLUMNS)))
        if embeddings is not None:
            embeddings.add(part, table.column(CLIP_EMBEDDING))
        del table
        pa.default_memory_pool().release_unused()  # the allocator would keep a part's worth of pages otherwise
    return PartsRead(RuleHits.concat(hits, len(policy.rules)), pa.chunked_array(ids, pa.string()), decisions,
                     embeddings)


class Embeddings:
    """The clip_embedding column of every part, copied part by part into one (N, D) float32 matrix (2 GB for a
    million 512-d rows: the near-duplicate search needs them all at once), and back into a column to rewrite a
    part, so no part is decoded twice."""

    def __init__(self, rows: int):
        self.matrix: np.ndarray | None = None  # allocated at the first embedding, when D is known
        self.present = np.zeros(rows, bool)
        self.null = np.zeros(rows, bool)  # null rather than an empty list
        self.start = 0

    def add(self, part: Path, column: pa.ChunkedArray) -> None:
        stop = self.start + len(column)
        values, self.present[self.start:stop] = embedding_matrix(column)
        self.null[self.start:stop] = column.is_null().to_numpy(zero_copy_only=False)
        if values is not None:
            if self.matrix is None:
                self.matrix = np.zeros((len(self.present), values.shape[1]), np.float32)  # pages touched on write
            elif values.shape[1] != self.matrix.shape[1]:
                raise DatasetError(f"{part}: clip_embedding of length {values.shape[1]}, the parts before have "
                                   f"{self.matrix.shape[1]}; one model must have made them")
            self.matrix[self.start:stop] = values
        self.start = stop

    def column(self, start: int, stop: int) -> pa.Array:
        """Rows [start, stop) as the list<float32> column they were read from."""
        present, null = self.present[start:stop], self.null[start:stop]
        dim = 0 if self.matrix is None else self.matrix.shape[1]
        offsets = np.r_[0, np.cumsum(present * dim)].astype(np.int32)
        if self.matrix is None:
            values = np.zeros(0, np.float32)
        elif present.all():
            values = self.matrix[start:stop].reshape(-1)  # a view: no copy
        else:
            values = self.matrix[start:stop][present].reshape(-1)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.float32()),
                                        mask=pa.array(null) if null.any() else None)


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


def policy_summary(policy: Policy, result: Funnel, outcome: Outcome) -> dict:
    """The summary keys a policy decides."""
    reasons, flags = outcome.counts()
    return {
        "policy": {"source": policy.source, "file": POLICY_FILE, "funnel": result.as_dict()},
        "reject_reasons": reasons,
        "flags": flags,
    }
