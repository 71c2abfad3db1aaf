"""Near-duplicates among unit-norm embeddings, without an N x N matrix: for each sample, the kept sample it nearly
duplicates.

The rule (`exact_near_duplicates` is its first, N x N, implementation, kept as the reference): kept samples are
visited in sample_id order, then rejected ones; a sample whose highest cosine with a representative is above the
threshold nearly duplicates that representative (the earliest one on a tie); otherwise a kept sample becomes a
representative. So `duplicate_of` always names a kept sample, and a rejected sample is marked but never a
representative. Two searches give that rule:

- `Search.EXACT`: blocked products, a block of rows against every earlier row in float32, within `memory_bytes`;
  the N x N answer (up to float rounding) at N^2 D multiply-adds: 10,000 512-d rows in about 2 s on 2 cores.
- `Search.LSH`: random-hyperplane LSH (Charikar 2002) proposes pairs (`bands` keys of `bits_per_band` sign bits;
  a pair whose whole signature differs in too many bits to be that close is dropped), then every proposed pair is
  confirmed with its exact cosine, so no duplicate is invented. Whatever the data, a pair exactly at the threshold
  is missed with probability at most MISS_AT_THRESHOLD, a closer one far less (3e-7 at cosine 0.99 for the
  threshold 0.98, a million rows). The cost is the projection (N x D x bits, 28 x 19 bits for a million rows) and
  one sort of N keys per band.

`Search.AUTO` takes EXACT up to EXACT_MAX_ROWS samples (and for thresholds below LSH_MIN_COSINE, where hashing
cannot separate near from far), LSH above. No ANN library (faiss, hnswlib, usearch): the rule needs every pair
above a high threshold rather than k nearest neighbours, a graph or IVF index costs an index build plus a million
queries where this costs one matrix product and sorts, and LSH gives a miss bound that holds for any data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from manifests.errors import DatasetError

EXACT_MAX_ROWS = 20_000
LSH_MIN_COSINE = 0.8
MISS_AT_THRESHOLD = 1e-4  # per pair exactly at the threshold
HAMMING_FALSE_DROP = 1e-9  # per pair at the threshold: the signature filter never drops a true pair in practice
MAX_BANDS = 64
MAX_BITS_PER_BAND = 31  # the keys are uint32
PREFILTER_BITS = 128  # a first signature check on two words, before the whole signature
PLAN_SAMPLE_PAIRS = 4096  # random pairs whose cosines size the bands
MEMORY_BYTES = 256 * 2**20  # working memory of the search, beyond the embeddings themselves
SEED = 0  # the hyperplanes: the same data gives the same answer


class Search(str, Enum):
    AUTO = "auto"
    EXACT = "exact"
    LSH = "lsh"


def embedding_matrix(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray | None, np.ndarray]:
    """A list<float32> column -> ((N, D) float32 matrix, (N,) present); rows without an embedding (null or empty)
    are zeros and not present. None when no row has one; rows of different lengths are a DatasetError."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = column.offsets.to_numpy()
    lengths = np.diff(offsets)
    present = (lengths > 0) & column.is_valid().to_numpy(zero_copy_only=False)
    if not present.any():
        return None, present
    dims = np.unique(lengths[present])
    if len(dims) > 1:
        raise DatasetError(f"clip_embedding: rows of different lengths {dims.tolist()}; one model must have made them")
    dim = int(dims[0])
    values = column.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if present.all():
        return values[offsets[0]:offsets[0] + len(column) * dim].reshape(len(column), dim), present
    matrix = np.zeros((len(column), dim), np.float32)
    matrix[present] = values[offsets[:-1][present, None] + np.arange(dim)]
    return matrix, present


def duplicate_rows(sample_ids: pa.Array | pa.ChunkedArray | Sequence[str], embeddings: np.ndarray,
                   present: np.ndarray, kept: np.ndarray, threshold: float, search: Search = Search.AUTO,
                   memory_bytes: int = MEMORY_BYTES) -> np.ndarray:
    """(N,) int64: for each row, the row of the kept sample it nearly duplicates (cosine > threshold), or -1.

    `embeddings` (N, D) float32, unit-norm where `present`; `kept` (N,) bool: what the rules decided."""
    rows = np.flatnonzero(present)
    out = np.full(len(present), -1, np.int64)
    if not len(rows):
        return out
    order = rows[_visiting_order(sample_ids, kept, rows)]  # row of each position, in the order the rule visits
    if search is Search.AUTO:
        search = Search.EXACT if len(rows) <= EXACT_MAX_ROWS or threshold < LSH_MIN_COSINE else Search.LSH
    if search is Search.EXACT:
        earlier = _exact(embeddings, order, kept[order], threshold, memory_bytes)
    else:
        earlier = np.full(len(order), -1, np.int64)
        _resolve(_lsh_pairs(embeddings, order, threshold, memory_bytes), kept[order].copy(), earlier)
    found = earlier >= 0
    out[order[found]] = order[earlier[found]]
    return out


def near_duplicates(sample_ids: Sequence[str], embeddings: Sequence[Sequence[float] | None], kept: Sequence[bool],
                    threshold: float, search: Search = Search.AUTO) -> list[str | None]:
    """`duplicate_rows` on Python lists: for each sample, the sample_id it nearly duplicates, or None."""
    column = pa.array([None if e is None else list(e) for e in embeddings], pa.list_(pa.float32()))
    matrix, present = embedding_matrix(column)
    if matrix is None:
        return [None] * len(sample_ids)
    rows = duplicate_rows(sample_ids, matrix, present, np.asarray(kept, bool), threshold, search)
    return [None if row < 0 else sample_ids[row] for row in rows]


def exact_near_duplicates(sample_ids: Sequence[str], embeddings: Sequence[Sequence[float] | None],
                          kept: Sequence[bool], threshold: float) -> list[str | None]:
    """The reference: the rule as first written, with the whole (N, N) cosine matrix (4 N^2 bytes: 40 GB at 100,000
    samples). Tests and `bench/filter_speed.py` compare the searches with it."""
    present = [i for i, e in enumerate(embeddings) if e is not None and len(e)]
    out: list[str | None] = [None] * len(sample_ids)
    if not present:
        return out
    matrix = np.asarray([embeddings[i] for i in present], dtype=np.float32)  # (N, D)
    similarity = matrix @ matrix.T  # (N, N)
    order = sorted(range(len(present)), key=lambda j: (not kept[present[j]], sample_ids[present[j]]))
    representatives: list[int] = []
    for j in order:
        if representatives:
            sims = similarity[j, representatives]
            best = int(np.argmax(sims))
            if sims[best] > threshold:
                out[present[j]] = sample_ids[present[representatives[best]]]
                continue
        if kept[present[j]]:
            representatives.append(j)
    return out


def _visiting_order(sample_ids: pa.Array | pa.ChunkedArray | Sequence[str], kept: np.ndarray,
                    rows: np.ndarray) -> np.ndarray:
    """Positions into `rows`: kept samples first, each group by sample_id (byte order of UTF-8 is code point order,
    as Python sorts str); the sort is stable."""
    ids = sample_ids if isinstance(sample_ids, pa.Array | pa.ChunkedArray) else pa.array(sample_ids, pa.string())
    table = pa.table({"rejected": ~kept[rows], "id": ids.take(pa.array(rows))})
    return pc.sort_indices(table, sort_keys=[("rejected", "ascending"), ("id", "ascending")]).to_numpy()


def _exact(embeddings: np.ndarray, order: np.ndarray, kept: np.ndarray, threshold: float,
           memory_bytes: int) -> np.ndarray:
    """The rule with blocked products: for each position, the earlier position it duplicates, or -1."""
    vectors = embeddings[order]  # (n, D), in visiting order
    n = len(order)
    is_representative, earlier = kept.copy(), np.full(n, -1, np.int64)
    block = max(1, memory_bytes // (8 * n))  # the block's products and their masked copy, float32
    for start in range(0, n, block):
        stop = min(n, start + block)
        sims = vectors[start:stop] @ vectors[:stop].T  # (b, stop): the block against itself and every earlier row
        # the closest representative before the block (final by now; the first on a tie, as argmax gives)
        before = np.where(is_representative[:start], sims[:, :start], -np.inf)  # (b, start)
        best = before.argmax(axis=1) if start else np.zeros(stop - start, np.int64)
        best_cosine = before[np.arange(stop - start), best] if start else np.full(stop - start, -np.inf, np.float32)
        near = np.flatnonzero(best_cosine > threshold)
        # and every earlier row inside the block above the threshold: whether it is a representative is decided
        # in visiting order by `_resolve`
        inside_later, inside_earlier = np.nonzero(np.tril(sims[:, start:stop] > threshold, k=-1))
        _resolve(Pairs(np.r_[best[near], start + inside_earlier], start + np.r_[near, inside_later],
                       np.r_[best_cosine[near], sims[inside_later, start + inside_earlier]].astype(np.float32)),
                 is_representative, earlier)
    return earlier


@dataclass(frozen=True)
class Pairs:
    """Pairs of positions (earlier < later) whose cosine is above the threshold."""

    earlier: np.ndarray  # (P,) int64
    later: np.ndarray  # (P,) int64
    cosine: np.ndarray  # (P,) float32


def _resolve(pairs: Pairs, is_representative: np.ndarray, earlier: np.ndarray) -> None:
    """The rule on pairs above the threshold, in visiting order: a position whose pairs include an earlier
    representative duplicates the closest one (the earliest on a tie) and is no representative. `is_representative`
    starts as the rules' keep, final for every position without an earlier partner; both arrays are updated."""
    order = np.lexsort((pairs.earlier, -pairs.cosine, pairs.later))  # by later, then best cosine, then earliest
    later, candidates = pairs.later[order], pairs.earlier[order]
    bounds = np.flatnonzero(np.diff(later)) + 1
    for start, stop in zip(np.r_[0, bounds], np.r_[bounds, len(later)]):
        group = candidates[start:stop]
        representatives = group[is_representative[group]]
        if len(representatives):
            earlier[later[start]] = representatives[0]
            is_representative[later[start]] = False


@dataclass(frozen=True)
class Bands:
    """How the rows are hashed: `bands` keys of `bits_per_band` sign bits each, and the signature filter."""

    bits_per_band: int
    bands: int
    max_differing_bits: int  # a pair at the threshold differs in more of its other bits with probability < 1e-9
    max_differing_prefilter: int  # the same, over the first PREFILTER_BITS bits

    @classmethod
    def plan(cls, rows: int, threshold: float, sample_cosines: np.ndarray) -> Bands:
        """The fewest bits per band at which a band holds about one random collision per row (estimated from the
        cosines of random pairs: embeddings that share a direction need more bits than ones spread over the
        sphere), then enough bands that a pair at the threshold is missed with probability MISS_AT_THRESHOLD."""
        differ = math.acos(min(1.0, max(-1.0, threshold))) / math.pi  # P(a hyperplane separates a pair at it)
        agree = 1.0 - np.arccos(np.clip(sample_cosines, -1.0, 1.0)) / np.pi  # the same, for the random pairs
        k = min(MAX_BITS_PER_BAND, max(1, math.ceil(math.log2(max(rows, 2))) - 2))
        while k < MAX_BITS_PER_BAND and rows * (rows - 1) / 2 * float(np.mean(agree ** k)) > rows:
            k += 1
        while True:
            collide = (1.0 - differ) ** k
            bands = 1 if collide >= 1.0 else math.ceil(math.log(MISS_AT_THRESHOLD) / math.log1p(-collide))
            if bands <= MAX_BANDS or k == 1:
                break
            k -= 1
        other = k * bands - k  # the bits outside the band a pair collided in
        return cls(k, bands, _binomial_upper(other, differ, HAMMING_FALSE_DROP),
                   _binomial_upper(min(other, PREFILTER_BITS), differ, HAMMING_FALSE_DROP))


def _binomial_upper(trials: int, p: float, tail: float) -> int:
    """The smallest c with P(Binomial(trials, p) > c) <= tail."""
    if p <= 0.0 or trials == 0:
        return 0
    if p >= 1.0:
        return trials
    logs = [math.lgamma(trials + 1) - math.lgamma(i + 1) - math.lgamma(trials - i + 1)
            + i * math.log(p) + (trials - i) * math.log1p(-p) for i in range(trials + 1)]
    above = 0.0
    for c in range(trials, -1, -1):
        if above + math.exp(logs[c]) > tail:
            return c
        above += math.exp(logs[c])
    return 0


def _lsh_pairs(embeddings: np.ndarray, order: np.ndarray, threshold: float, memory_bytes: int) -> Pairs:
    """Every pair of positions above the threshold that the bands propose, confirmed by its exact cosine."""
    n, dim = len(order), embeddings.shape[1]
    rng = np.random.default_rng(SEED)
    sample = rng.integers(0, n, (2, min(n * n, PLAN_SAMPLE_PAIRS)))
    sample = sample[:, sample[0] != sample[1]]
    plan = Bands.plan(n, threshold, _cosines(embeddings, order[sample[0]], order[sample[1]], memory_bytes))
    bits = plan.bits_per_band * plan.bands
    planes = rng.standard_normal((dim, bits), dtype=np.float32)
    words = -(-bits // 64)
    signatures = np.zeros((n, words * 8), np.uint8)
    keys = np.zeros((plan.bands, n), np.uint32)
    chunk = max(1, memory_bytes // (8 * (bits + dim)))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        signs = embeddings[order[start:stop]] @ planes > 0  # (c, bits)
        signatures[start:stop, :-(-bits // 8)] = np.packbits(signs, axis=1, bitorder="little")
        band_bits = np.zeros((stop - start, plan.bands, 32), bool)  # each band's bits, padded to a uint32
        band_bits[:, :, :plan.bits_per_band] = signs.reshape(stop - start, plan.bands, plan.bits_per_band)
        keys[:, start:stop] = np.packbits(band_bits, axis=2, bitorder="little").view("<u4")[:, :, 0].T
    signatures = signatures.view(np.uint64)  # (n, words)
    head = signatures[:, :PREFILTER_BITS // 64]

    proposed = []
    per_chunk = max(1, memory_bytes // (8 * (3 * words + 4)))
    for key in keys:
        for first, second in _colliding(key, per_chunk):
            differing = np.bitwise_count(head[first] ^ head[second]).sum(axis=1, dtype=np.int32)
            close = differing <= plan.max_differing_prefilter
            first, second = first[close], second[close]
            differing = np.bitwise_count(signatures[first] ^ signatures[second]).sum(axis=1, dtype=np.int32)
            close = differing <= plan.max_differing_bits
            proposed.append(first[close] * n + second[close])
    codes = np.unique(np.concatenate(proposed)) if proposed else np.zeros(0, np.int64)
    earlier, later = codes // n, codes % n
    cosine = _cosines(embeddings, order[earlier], order[later], memory_bytes)
    above = cosine > threshold
    return Pairs(earlier[above], later[above], cosine[above])


def _cosines(embeddings: np.ndarray, a: np.ndarray, b: np.ndarray, memory_bytes: int) -> np.ndarray:
    """(P,) float32: the cosine of rows a[i] and b[i] (unit-norm rows: their dot product)."""
    out = np.empty(len(a), np.float32)
    per_chunk = max(1, memory_bytes // (8 * embeddings.shape[1]))
    for start in range(0, len(a), per_chunk):
        stop = min(len(a), start + per_chunk)
        out[start:stop] = np.einsum("ij,ij->i", embeddings[a[start:stop]], embeddings[b[start:stop]])
    return out


def _colliding(key: np.ndarray, per_chunk: int):
    """All pairs of positions (first < second) with the same key, at most about `per_chunk` pairs at a time."""
    packed = np.sort((key.astype(np.uint64) << np.uint64(32)) | np.arange(len(key), dtype=np.uint64))
    sorted_keys = packed >> np.uint64(32)
    by_key = (packed & np.uint64(0xFFFFFFFF)).astype(np.int64)  # positions, ascending within each key
    run_start = np.r_[0, np.flatnonzero(np.diff(sorted_keys)) + 1]
    size = np.diff(np.r_[run_start, len(key)])
    shared = size > 1
    if not shared.any():
        return
    members = _ranges(run_start[shared], size[shared])  # sorted indices of every member of a shared key
    later_count = np.repeat(run_start[shared] + size[shared], size[shared]) - members - 1  # members after it
    total = np.cumsum(later_count)
    start = 0
    while start < len(members):
        stop = int(np.searchsorted(total, (total[start - 1] if start else 0) + per_chunk, side="right"))
        stop = max(stop, start + 1)
        counts = later_count[start:stop]
        first = np.repeat(members[start:stop], counts)
        second = first + 1 + np.arange(len(first)) - np.repeat(np.cumsum(counts) - counts, counts)
        yield by_key[first], by_key[second]
        start = stop


def _ranges(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The concatenation of arange(s, s + n) for each (s, n)."""
    ends = np.cumsum(sizes)
    return np.arange(ends[-1]) - np.repeat(ends - sizes, sizes) + np.repeat(starts, sizes)
