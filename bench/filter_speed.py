"""`layerflow-data filter` on a synthetic manifest with planted near-duplicates: wall time, peak RSS, agreement with
the exact N x N rule, and whether any model library loaded.

Prints one JSON line. The dataset (`--rows` samples in `--parts` parts, random scores, random unit-norm 512-d
embeddings of which `--duplicates` are noisy copies of another row at cosine 0.99-0.999) is written with numpy and
pyarrow before the clock starts. `seconds_wall` and `peak_rss_mb` are those of the `filter` command alone, run in a
fresh interpreter as a user runs it (its own `ru_maxrss`).

Baseline (measured where it fits, `rows <= 20,000`): today's exact path before this change, in a fresh interpreter:
the parts read whole, rows and embeddings as Python lists, the rules row by row and the N x N cosine matrix
(`filters.duplicates.exact_near_duplicates`); writing is not counted, so `ratio` (baseline seconds / filter seconds)
flatters the baseline. Above that only its matrix is projected (4 N^2 bytes). Where the baseline runs, `agreement`
compares the rows the command marked as duplicates with the baseline's, and `lsh` runs the command again with
`[duplicates] search = "lsh"` (the search `auto` takes above 20,000 rows) to measure its agreement too. Above it,
`agreement_planted` compares with the exact rule over the planted families (`planted_reference`).

    python bench/filter_speed.py [--rows 1000] [--parts N] [--embedding-dim 512] [--duplicates 0.01]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from filters.duplicates import EXACT_MAX_ROWS, Search, exact_near_duplicates  # noqa: E402
from filters.policy import Op, Policy  # noqa: E402
from manifests import io  # noqa: E402
from manifests.layers import CAPTIONED_LAYERS, Layer, SampleKind  # noqa: E402
from manifests.schema import (  # noqa: E402
    CLIP_EMBEDDING,
    DUPLICATE_OF,
    KIND,
    LAYERS_URI_ALPHA,
    LAYERS_URI_FOREGROUND,
    MANIFEST_DIR,
    SAMPLE_ID,
    SAMPLE_SCHEMA,
    SCORES,
    media_uri,
    uri_column,
)

BASELINE_MAX_ROWS = 20_000
ROWS_PER_PART = 50_000
# The probe's own peak RSS: VmHWM of its address space. Not ru_maxrss, which Linux carries over exec from the
# parent's address space (the bench's, a few GB after generating a million rows).
PEAK_RSS = """
def PEAK_RSS_KIB():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
"""
FILTER = PEAK_RSS + """
import resource, sys, time
start = time.perf_counter()
sys.argv = ["layerflow-data", "filter", *sys.argv[1:]]
import cli
try:
    cli.main()
except SystemExit as exc:
    assert not exc.code, exc.code
heavy = [m for m in ("torch", "open_clip") if m in sys.modules]
usage = resource.getrusage(resource.RUSAGE_SELF)
print("__result__", time.perf_counter() - start, PEAK_RSS_KIB(), usage.ru_utime + usage.ru_stime, ",".join(heavy))
"""
BASELINE = PEAK_RSS + """
import json, resource, sys, time
from pathlib import Path
start = time.perf_counter()
import pyarrow.parquet as pq
from filters.duplicates import exact_near_duplicates
from filters.policy import Policy
from manifests.schema import CLIP_EMBEDDING, KIND, SAMPLE_ID, SAMPLE_SCHEMA
root, out = Path(sys.argv[1]), sys.argv[2]
policy = Policy.default()
tables = [pq.read_table(part, schema=SAMPLE_SCHEMA) for part in sorted((root / "manifest").glob("part-*.parquet"))]
columns = sorted({rule.score for rule in policy.rules} | {SAMPLE_ID, KIND})
rows = [row for table in tables for row in table.select(columns).to_pylist()]
embeddings = [e for table in tables for e in table.column(CLIP_EMBEDDING).to_pylist()]
kept = [policy.decide(row).keep for row in rows]
ids = [row[SAMPLE_ID] for row in rows]
duplicates = exact_near_duplicates(ids, embeddings, kept, policy.duplicate_cosine)
seconds = time.perf_counter() - start
Path(out).write_text(json.dumps(dict(zip(ids, duplicates))))
usage = resource.getrusage(resource.RUSAGE_SELF)
print("__result__", seconds, PEAK_RSS_KIB(), usage.ru_utime + usage.ru_stime)
"""


def synthetic_dataset(root: Path, rows: int, parts: int, dim: int, duplicates: float,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A dataset folder with `rows` samples (row i is sample `i:016x`); returns the planted copies and their
    sources (row numbers)."""
    rng = np.random.default_rng(seed)
    embeddings = rng.standard_normal((rows, dim), dtype=np.float32)  # (N, D)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    planted = int(rows * duplicates)
    copies = rng.choice(rows, planted, replace=False)
    sources = rng.choice(np.setdiff1d(np.arange(rows), copies), planted)
    cosine = rng.uniform(0.99, 0.999, planted)
    noise = np.sqrt((1.0 / cosine**2 - 1.0) / dim).astype(np.float32)  # |noise|^2 = 1/c^2 - 1: cosine ~ c
    noisy = embeddings[sources] + noise[:, None] * rng.standard_normal((planted, dim), dtype=np.float32)
    embeddings[copies] = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    template = _template_row()
    rejected = 0.05
    for chunk in np.array_split(np.arange(rows), parts):
        n = len(chunk)
        ids = pa.array(np.char.mod("%016x", chunk), pa.string())
        columns = {
            SAMPLE_ID: ids,
            KIND: pa.array(np.where(chunk % 3 == 0, SampleKind.IMAGE_FROZEN.value, SampleKind.VIDEO_COPY_PASTE.value)),
            **{name: pa.array(values) for name, values in _scores(rng, n, rejected).items()},
            **{uri_column(layer): pa.array(np.char.add(np.char.add("media/", np.char.mod("%016x", chunk)),
                                                       media_uri("", layer).removeprefix("media/")))
               for layer in Layer},
            CLIP_EMBEDDING: pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * dim),
                                                     pa.array(embeddings[chunk].reshape(-1))),
        }
        columns[LAYERS_URI_FOREGROUND] = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)),
                                                                  columns[uri_column(Layer.FOREGROUND)])
        columns[LAYERS_URI_ALPHA] = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)),
                                                             columns[uri_column(Layer.ALPHA)])
        table = template.take(pa.array(np.zeros(n, np.int64)))
        for name, values in columns.items():
            table = table.set_column(table.schema.get_field_index(name), SAMPLE_SCHEMA.field(name), values)
        name = io.manifest_part_name([{SAMPLE_ID: sample_id} for sample_id in ids.to_pylist()])
        io.write_parquet_atomic(table, root / MANIFEST_DIR / name)
    io.write_json_atomic({"samples": {"total": rows, "kept": rows, "rejected": 0}, "inputs": {}, "unscored": {}},
                         root / io.SUMMARY_FILE)
    return copies, sources


def planted_reference(root: Path, copies: np.ndarray, sources: np.ndarray) -> dict[str, str | None]:
    """The exact rule (N x N, on the rules' keep) over the rows of the planted families, a source and its copies.
    No other pair comes near the threshold (random 512-d unit vectors have cosines of about +-0.05), so this is
    the exact answer for the whole manifest where the N x N matrix of all rows cannot be built."""
    policy = Policy.default()
    family = [f"{row:016x}" for row in np.unique(np.r_[copies, sources])]
    columns = sorted({rule.score for rule in policy.rules} | {SAMPLE_ID, KIND, CLIP_EMBEDDING})
    table = ds.dataset(str(root / MANIFEST_DIR), schema=SAMPLE_SCHEMA, format="parquet").to_table(
        columns=columns, filter=pc.field(SAMPLE_ID).isin(family))
    rows = table.to_pylist()
    ids = [row[SAMPLE_ID] for row in rows]
    kept = [policy.decide(row).keep for row in rows]
    return dict(zip(ids, exact_near_duplicates(ids, [row[CLIP_EMBEDDING] for row in rows], kept,
                                               policy.duplicate_cosine)))


def _scores(rng: np.random.Generator, n: int, rejected: float) -> dict[str, np.ndarray]:
    """Scores every rule of the default policy passes, except one failing score in a `rejected` fraction of rows."""
    rules = [rule for rule in Policy.default().rules if rule.score in SCORES]
    scores = {}
    for name in SCORES:
        low = max([rule.bound for rule in rules if rule.score == name and rule.op is Op.BELOW], default=0.0)
        high = min([rule.bound for rule in rules if rule.score == name and rule.op is Op.ABOVE], default=low + 1.0)
        scores[name] = rng.uniform(low, high, n).astype(np.float32)
    failing = np.flatnonzero(rng.random(n) < rejected)
    for row, r in zip(failing, rng.integers(0, len(rules), len(failing))):
        rule = rules[r]
        scores[rule.score][row] = rule.bound + (-1.0 if rule.op is Op.BELOW else 1.0)
    return scores


def _template_row() -> pa.Table:
    """One row of the values every synthetic sample shares."""
    row = {name: None for name in SAMPLE_SCHEMA.names}
    row.update({uri_column(layer): "" for layer in Layer}, **{f"caption_{layer.value}": "a caption"
                                                              for layer in CAPTIONED_LAYERS})
    row.update(
        sample_id="", kind="", split="train", num_frames=16, fps=8.0, height=256, width=256, input_id_foreground="f",
        input_id_background="b", source_foreground="fg.mp4", source_background="bg.mp4",
        frames_foreground=list(range(16)), frames_background=list(range(16)), placement="{}", matting_backend="given",
        captioner="sidecar", seed=0, caption_layers=len(CAPTIONED_LAYERS), random_weights=False, adapter="copy_paste",
        layers_uri_foreground=[], layers_uri_alpha=[], layers_caption=["a caption"], layers_source=["fg.mp4"],
        source_companions=[], config_fingerprint="x", clip_model="synthetic", keep=True, reject_reasons=[], flags=[],
    )
    return pa.Table.from_pylist([row], schema=SAMPLE_SCHEMA)


def run(probe: str, *args: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        sys.exit(f"probe failed:\n{done.stderr}")
    return next(line for line in done.stdout.splitlines() if line.startswith("__result__")).split(" ")[1:]


def filter_command(root: Path, *options: str) -> dict:
    """The filter command in a fresh interpreter, and the duplicate_of it wrote."""
    start = time.perf_counter()
    inside, max_rss_kib, cpu, heavy = (run(FILTER, str(root), *options) + [""])[:4]
    wall = time.perf_counter() - start
    table = io.read_manifest(root, columns=[SAMPLE_ID, DUPLICATE_OF])
    return {"seconds_wall": round(wall, 3), "seconds_in_command": round(float(inside), 3),
            "cpu_seconds": round(float(cpu), 3), "peak_rss_mb": round(int(max_rss_kib) / 1024, 1),
            "model_modules_imported": [m for m in heavy.split(",") if m],
            "duplicate_of": dict(zip(table.column(SAMPLE_ID).to_pylist(), table.column(DUPLICATE_OF).to_pylist()))}


def agreement(found: dict[str, str | None], exact: dict[str, str | None]) -> dict:
    """Recall and precision of the rows marked as duplicates, and whether every duplicate_of is the same."""
    marked = {sample for sample, of in found.items() if of is not None}
    truth = {sample for sample, of in exact.items() if of is not None}
    return {"marked": len(marked), "marked_exact": len(truth),
            "recall": round(len(marked & truth) / len(truth), 6) if truth else 1.0,
            "precision": round(len(marked & truth) / len(marked), 6) if marked else 1.0,
            "same_duplicate_of": found == exact}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--parts", type=int, default=None, help=f"default: one per {ROWS_PER_PART:,} rows, at least 8")
    parser.add_argument("--embedding-dim", type=int, default=512)
    parser.add_argument("--duplicates", type=float, default=0.01, help="fraction of rows planted as noisy copies")
    args = parser.parse_args()
    parts = args.parts or max(8, -(-args.rows // ROWS_PER_PART))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ds"
        copies, sources = synthetic_dataset(root, args.rows, parts, args.embedding_dim, args.duplicates)
        measured = filter_command(root)
        found = measured.pop("duplicate_of")
        result = {"bench": "filter_speed", "rows": args.rows, "parts": parts, "embedding_dim": args.embedding_dim,
                  "planted_duplicates": len(copies),
                  "search": (Search.EXACT if args.rows <= EXACT_MAX_ROWS else Search.LSH).value, **measured,
                  "duplicates_marked": sum(of is not None for of in found.values())}
        if args.rows <= BASELINE_MAX_ROWS:
            exact_file = Path(tmp) / "exact.json"
            seconds, max_rss_kib, cpu = run(BASELINE, str(root), str(exact_file))
            exact = json.loads(exact_file.read_text())
            result["baseline"] = {"name": "exact N x N path before this change (writing not counted)",
                                  "seconds": round(float(seconds), 3), "cpu_seconds": round(float(cpu), 3),
                                  "peak_rss_mb": round(int(max_rss_kib) / 1024, 1)}
            result["ratio"] = round(float(seconds) / measured["seconds_wall"], 2)
            result["rss_ratio"] = round(int(max_rss_kib) / 1024 / measured["peak_rss_mb"], 2)
            result["agreement"] = agreement(found, exact)
            lsh_policy = Path(tmp) / "lsh.toml"
            lsh_policy.write_text(Policy.default().text.replace("[duplicates]", '[duplicates]\nsearch = "lsh"'))
            lsh = filter_command(root, "--policy", str(lsh_policy))
            result["lsh"] = {"seconds_wall": lsh["seconds_wall"], "peak_rss_mb": lsh["peak_rss_mb"],
                             **agreement(lsh["duplicate_of"], exact)}
        else:
            result["baseline"] = {"name": "exact N x N path before this change: not run",
                                  "similarity_matrix_gb": round(4 * args.rows**2 / 1e9, 1)}
            exact = dict.fromkeys(found)
            exact.update(planted_reference(root, copies, sources))
            result["agreement_planted"] = agreement(found, exact)
        result["loadavg"] = [round(load, 2) for load in os.getloadavg()]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
