"""Near-duplicates without an N x N matrix: the blocked exact search and the LSH search against the N x N reference,
and `filter` streaming the manifest parts with only the columns it needs, loading no model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.stats import binom

from filters import apply
from filters.apply import apply_policy
from filters.duplicates import (
    HAMMING_FALSE_DROP,
    MISS_AT_THRESHOLD,
    PREFILTER_BITS,
    Bands,
    Search,
    duplicate_rows,
    embedding_matrix,
    exact_near_duplicates,
    near_duplicates,
)
from filters.policy import Policy
from manifests import io
from manifests.errors import DatasetError
from manifests.layers import CAPTIONED_LAYERS, Layer, SampleKind
from manifests.schema import (
    CLIP_EMBEDDING,
    DECISION_COLUMNS,
    KIND,
    MANIFEST_DIR,
    SAMPLE_ID,
    SAMPLE_SCHEMA,
    SCORES,
    media_uri,
    uri_column,
)

REPO = Path(__file__).resolve().parents[1]


def planted(rows: int, dim: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Random unit vectors, 5% of them noisy copies of another row at cosines from 0.95 to 1 (around the threshold
    0.98 too) and 1% exact copies (ties); ids in random order, 20% rejected by the rules, 3% without an embedding."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((rows, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    copies = rng.choice(rows, rows // 20, replace=False)
    for target in copies:
        cosine = rng.uniform(0.95, 1.0)
        noisy = vectors[rng.integers(rows)] + np.sqrt((1 / cosine**2 - 1) / dim) * rng.standard_normal(dim)
        vectors[target] = noisy / np.linalg.norm(noisy)
    for target in rng.choice(rows, rows // 100, replace=False):
        vectors[target] = vectors[rng.integers(rows)]
    ids = [f"{i:06x}" for i in rng.permutation(rows)]
    return ids, vectors, rng.random(rows) > 0.2, rng.random(rows) > 0.03


def as_lists(vectors: np.ndarray, present: np.ndarray) -> list[list[float] | None]:
    return [row.tolist() if here else None for row, here in zip(vectors, present)]


@pytest.mark.parametrize("search", [Search.EXACT, Search.LSH])
def test_each_search_marks_the_same_duplicates_as_the_n_by_n_matrix(search):
    ids, vectors, kept, present = planted(2000, 64)
    expected = exact_near_duplicates(ids, as_lists(vectors, present), kept.tolist(), 0.98)
    rows = duplicate_rows(ids, vectors, present, kept, 0.98, search)
    assert [None if row < 0 else ids[row] for row in rows] == expected
    marked = [i for i, of in enumerate(expected) if of is not None]
    assert len(marked) > 50 and not kept[marked].all()  # rejected rows are marked too
    assert all(kept[ids.index(of)] for of in expected if of is not None)  # always a kept sample


@pytest.mark.parametrize("memory_bytes", [1, 8 * 300 * 7, 2**30])
def test_the_exact_search_gives_the_same_answer_for_any_block_size(memory_bytes):
    ids, vectors, kept, present = planted(300, 16, seed=1)
    expected = exact_near_duplicates(ids, as_lists(vectors, present), kept.tolist(), 0.9)
    rows = duplicate_rows(ids, vectors, present, kept, 0.9, Search.EXACT, memory_bytes=memory_bytes)
    assert [None if row < 0 else ids[row] for row in rows] == expected


@pytest.mark.parametrize("search", [Search.EXACT, Search.LSH])
def test_a_tie_between_representatives_goes_to_the_earliest(search):
    ids = ["c", "b", "a"]  # visited a, b, c: c is as close to a as to b
    embeddings = [[0.5**0.5, 0.5**0.5], [0.0, 1.0], [1.0, 0.0]]
    assert near_duplicates(ids, embeddings, [True] * 3, 0.5, search) == ["a", None, None]
    assert exact_near_duplicates(ids, embeddings, [True] * 3, 0.5) == ["a", None, None]


@pytest.mark.parametrize("search", [Search.EXACT, Search.LSH])
def test_a_duplicate_of_a_duplicate_points_at_the_representative_or_at_nothing(search):
    # b is within the threshold of a, c of b but not of a: b is no representative, so c is kept
    ids = ["a", "b", "c"]
    angle = np.arccos(0.985)
    embeddings = [[np.cos(k * angle), np.sin(k * angle)] for k in range(3)]
    assert near_duplicates(ids, embeddings, [True] * 3, 0.98, search) == [None, "a", None]


@pytest.mark.parametrize(("rows", "threshold"), [(10, 0.98), (10_000, 0.98), (1_000_000, 0.98), (1_000_000, 0.9)])
def test_the_bands_miss_a_pair_at_the_threshold_rarely_and_the_signature_filter_keeps_it(rows, threshold):
    spread = np.zeros(1000, np.float32)  # random pairs of embeddings spread over the sphere are orthogonal
    plan = Bands.plan(rows, threshold, spread)
    differ = np.arccos(threshold) / np.pi
    assert (1 - (1 - differ) ** plan.bits_per_band) ** plan.bands <= MISS_AT_THRESHOLD
    other = plan.bits_per_band * (plan.bands - 1)
    assert binom.sf(plan.max_differing_bits, other, differ) <= HAMMING_FALSE_DROP
    assert binom.sf(plan.max_differing_prefilter, min(other, PREFILTER_BITS), differ) <= HAMMING_FALSE_DROP
    assert binom.sf(plan.max_differing_bits - 1, other, differ) > HAMMING_FALSE_DROP  # and no looser than that


def test_embeddings_that_share_a_direction_get_more_bits_per_band():
    spread = Bands.plan(1_000_000, 0.98, np.zeros(1000, np.float32))
    shared = Bands.plan(1_000_000, 0.98, np.full(1000, 0.5, np.float32))
    assert shared.bits_per_band > spread.bits_per_band and shared.bands > spread.bands


def test_the_embedding_column_becomes_a_matrix_with_missing_rows_marked():
    matrix, present = embedding_matrix(pa.array([[1.0, 0.0], None, [], [0.0, 1.0]], pa.list_(pa.float32())))
    assert present.tolist() == [True, False, False, True]
    assert matrix.tolist() == [[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 1.0]]
    assert embedding_matrix(pa.array([None, []], pa.list_(pa.float32())))[0] is None
    with pytest.raises(DatasetError, match=r"different lengths \[2, 3\]"):
        embedding_matrix(pa.array([[1.0, 0.0], [1.0, 0.0, 0.0]], pa.list_(pa.float32())))


def write_dataset(root: Path, vectors: np.ndarray, parts: int) -> list[str]:
    """A manifest of passing scores and the given embeddings, in `parts` parts."""
    ids = [f"{i:04x}" for i in range(len(vectors))]
    rows = []
    for sample_id, vector in zip(ids, vectors):
        row = {name: None for name in SAMPLE_SCHEMA.names}
        row.update({uri_column(layer): media_uri(sample_id, layer) for layer in Layer})
        row.update(
            sample_id=sample_id, kind=SampleKind.VIDEO_COPY_PASTE.value, adapter="copy_paste", split="train",
            caption_layers=len(CAPTIONED_LAYERS), layers_uri_foreground=[], layers_uri_alpha=[], layers_caption=[],
            num_frames=4, fps=8.0, height=32, width=32, input_id_foreground="f", input_id_background="b",
            source_foreground="f.mp4", source_background="b.mp4", layers_source=[], source_companions=[],
            frames_foreground=[], frames_background=[], placement="{}", matting_backend="given", random_weights=False,
            captioner="sidecar", seed=0, config_fingerprint="x", recompose_psnr=40.0,
            clip_embedding=vector.tolist() if vector.any() else None,
            keep=True, reject_reasons=[], flags=[],
        )
        rows.append(row)
    for chunk in np.array_split(np.arange(len(rows)), parts):
        io.write_manifest_part(root, [rows[i] for i in chunk])
    io.write_json_atomic({"samples": {"total": len(rows)}, "inputs": {}, "unscored": {}}, root / io.SUMMARY_FILE)
    return ids


DUPLICATES_ONLY = '[[rule]]\nscore = "recompose_psnr"\nbelow = 30\n[duplicates]\nclip_cosine_above = 0.98\n'


def test_filter_reads_the_parts_one_at_a_time_with_only_the_columns_the_policy_needs(tmp_path, monkeypatch):
    _, vectors, _, present = planted(60, 8, seed=2)
    vectors[~present] = 0.0  # some samples have no embedding (written as null)
    ids = write_dataset(tmp_path, vectors, parts=3)
    before = io.read_manifest(tmp_path)
    reads = []
    real = io.read_part

    def read_part(path, columns=None):
        reads.append(columns)
        return real(path, columns)

    monkeypatch.setattr(apply.io, "read_part", read_part)
    policy = Policy.from_toml(DUPLICATES_ONLY, "t")
    apply_policy(tmp_path, policy)
    projected, rewritten = reads[:3], reads[3:]
    assert all(set(columns) == {SAMPLE_ID, KIND, "recompose_psnr", CLIP_EMBEDDING, *DECISION_COLUMNS}
               for columns in projected)
    assert len(SAMPLE_SCHEMA.names) > 3 * len(projected[0])
    assert rewritten and all(CLIP_EMBEDDING not in columns for columns in rewritten)  # decoded once

    manifest = io.read_manifest(tmp_path).sort_by(SAMPLE_ID)
    expected = exact_near_duplicates(ids, manifest.column(CLIP_EMBEDDING).to_pylist(), [True] * len(ids), 0.98)
    assert manifest.column("duplicate_of").to_pylist() == expected and any(expected)
    assert manifest.column("keep").to_pylist() == [of is None for of in expected]
    # every other column is written back as it was, the embeddings too (rebuilt from memory, not read twice)
    rest = [name for name in SAMPLE_SCHEMA.names if name not in DECISION_COLUMNS]
    assert manifest.select(rest).equals(before.sort_by(SAMPLE_ID).select(rest))
    assert all(pq.read_schema(part).metadata == SAMPLE_SCHEMA.metadata for part in (tmp_path / MANIFEST_DIR).iterdir())

    reads.clear()
    stamps = {part: part.stat().st_mtime_ns for part in (tmp_path / MANIFEST_DIR).iterdir()}
    apply_policy(tmp_path, policy)  # nothing changed: no part is read again or written
    assert len(reads) == 3 and {p: p.stat().st_mtime_ns for p in (tmp_path / MANIFEST_DIR).iterdir()} == stamps


def test_filter_of_a_dataset_without_embeddings_counts_every_sample_unscored(tmp_path):
    write_dataset(tmp_path, np.zeros((5, 0), np.float32), parts=2)
    [_, step] = apply_policy(tmp_path, Policy.from_toml(DUPLICATES_ONLY, "t")).steps
    assert (step.alone, step.unscored) == (0, 5)
    assert io.read_summary(tmp_path)["samples"]["kept"] == 5


def test_filter_imports_no_model_library(tmp_path):
    _, vectors, _, _ = planted(40, 8, seed=3)
    write_dataset(tmp_path, vectors, parts=2)
    probe = ("import sys\nfrom filters.apply import apply_policy\nfrom filters.policy import Policy\n"
             "print(apply_policy(sys.argv[1], Policy.default()).kept)\n"
             "print(sorted(m for m in ('torch', 'open_clip', 'transformers', 'ray') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    kept, modules = done.stdout.strip().splitlines()[-2:]
    assert int(kept) > 0 and modules == "[]"


def test_scores_of_every_row_are_read_with_the_declared_schema(tmp_path):
    _, vectors, _, _ = planted(10, 4, seed=4)
    write_dataset(tmp_path, vectors, parts=1)
    [part] = (tmp_path / MANIFEST_DIR).iterdir()
    table = io.read_part(part, [SAMPLE_ID, *SCORES])
    assert table.schema.field("recompose_psnr").type == pa.float32() and table.num_rows == 10
