"""What an input is, wherever it is stored: its id, a fingerprint of its content, its group, and the split a group
(or the groups of a sample) falls in. Splitting, duplicate detection and resuming all decide by these.

- `input_id`: a hash of the input's pool, its path relative to `--source` (posix, as listed) and its size in bytes,
  so the same files under another folder, or on object storage, get the same id and so the same sample ids.
- `fingerprint`: the 64-bit DCT perceptual hash (pHash) of a few evenly spaced decoded frames, at source resolution.
  A re-encoding (an mp4 and its own extracted JPEG frames, a PNG copy of a JPEG) changes a few bits per frame; other
  footage changes about half of them. Two fingerprints are the same content when every frame is within
  `FRAME_TOLERANCE` bits (`same_content`).
- group: what must stay on one side of the train / val line. The user's `group` (sidecar or list column) when given,
  else the content fingerprint. A sample has two: its foreground's object and its background (`background_group`:
  what is behind the object in the input it came from), and falls in `val` only when both do (`split_for`).
- family: the part of a group before its first "/" (`family_of`), what an evaluation reports per family.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import cv2
import numpy as np

# 1: ids hashed the absolute uri and splits the clip name; 2: ids as `input_id`, splits by the foreground's group;
# 3: splits by the foreground's group and the background's (`background_group`). A build record names this.
IDENTITY_VERSION = "3"
FINGERPRINT_FRAMES = 4  # frames hashed per clip (a still image: its one frame)
FRAME_TOLERANCE = 10  # differing bits (of 64) per frame still counted as the same content
_DCT_SIZE, _LOW = 32, 8  # the frame is shrunk to 32x32 grey; the 8x8 lowest frequencies are hashed
_SEPARATOR = "-"


def input_id(pool: str, relative: str, size: int) -> str:
    """The id of an input: where it sits under its source (not where the source is) and how many bytes it holds."""
    return hashlib.sha1(f"{pool}|{relative}|{size}".encode()).hexdigest()[:16]


def frame_hash(frame: np.ndarray) -> int:
    """The 64-bit DCT perceptual hash of one frame ((H, W, 3) or (H, W) uint8): the signs of its 8x8 lowest
    frequencies against their median, on a 32x32 grey thumbnail (size- and compression-independent)."""
    grey = frame if frame.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(frame[..., :3]), cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey.astype(np.float32), (_DCT_SIZE, _DCT_SIZE), interpolation=cv2.INTER_AREA)
    low = cv2.dct(small)[:_LOW, :_LOW].flatten()
    bits = np.packbits(low > np.median(low))
    return int.from_bytes(bits.tobytes(), "big")


def fingerprint_positions(total: int, count: int = FINGERPRINT_FRAMES) -> list[int]:
    """The frames a clip of `total` frames is fingerprinted by: the middles of `count` equal spans (fewer if short)."""
    count = max(1, min(count, total))
    return sorted({min(total - 1, int((k + 0.5) * total / count)) for k in range(count)})


def fingerprint(frames: Sequence[np.ndarray]) -> str:
    """The content fingerprint of the frames at `fingerprint_positions`: their hashes as hex, joined by '-'."""
    return _SEPARATOR.join(f"{frame_hash(frame):016x}" for frame in frames)


def _hashes(value: str) -> np.ndarray:
    return np.array([int(part, 16) for part in value.split(_SEPARATOR)], dtype=np.uint64)


def distance(a: str, b: str) -> int | None:
    """The largest per-frame Hamming distance of two fingerprints; None when they hash different frame counts (a
    still image and a clip are never the same content)."""
    x, y = _hashes(a), _hashes(b)
    if x.shape != y.shape:
        return None
    return int(np.bitwise_count(x ^ y).max())


def same_content(a: str, b: str, tolerance: int = FRAME_TOLERANCE) -> bool:
    found = distance(a, b)
    return found is not None and found <= tolerance


def first_copies(fingerprints: Sequence[str | None], tolerance: int = FRAME_TOLERANCE) -> list[int | None]:
    """For each fingerprint, the index of the first earlier one with the same content (None: it is the first, or it
    has none). Chains resolve to their first member. Compares all pairs of equal frame count, vectorised."""
    out: list[int | None] = [None] * len(fingerprints)
    by_count: dict[int, list[int]] = {}
    for index, value in enumerate(fingerprints):
        if value:
            by_count.setdefault(value.count(_SEPARATOR) + 1, []).append(index)
    for indices in by_count.values():
        table = np.stack([_hashes(fingerprints[i]) for i in indices])  # (N, frames)
        for row, index in enumerate(indices):
            if out[index] is not None:
                continue
            later = np.bitwise_count(table[row + 1 :] ^ table[row]).max(axis=1) <= tolerance
            for offset in np.flatnonzero(later):
                other = indices[row + 1 + int(offset)]
                if out[other] is None:
                    out[other] = index
    return out


def split_for(groups: Sequence[str], seed: int, val_fraction: float) -> str | None:
    """The split of something made from these groups: `val` when each group hashes into the val share, `train` when
    none does, None when they disagree (a sample made from a val group and a train group would leak one into the
    other, so a held-out evaluation must not make it). Each group falls on the same side wherever it appears, for a
    given seed and fraction; one group never disagrees with itself."""
    sides = {_fraction(seed, group) < val_fraction for group in groups}
    if len(sides) != 1:
        return None
    return "val" if sides.pop() else "train"


def heldout_overlap(samples: Iterable[tuple[str, str | None, str | None]]) -> int:
    """How many `val` samples show an object or a background that some `train` sample shows too, from (split, object
    group, background group) per sample; 0 when the split holds out by identity. A sample without groups (a manifest
    before schema 6) counts as overlapping: nothing shows that it is held out."""
    samples = list(samples)
    trained = {group for split, *groups in samples if split == "train" for group in groups if group}
    return sum(1 for split, *groups in samples
               if split == "val" and (not all(groups) or any(group in trained for group in groups)))


def family_of(group: str | None) -> str:
    """The family of a group: its part before the first "/" ("shape/star-03" -> "shape"); a group without "/" is its
    own family; no group: "unknown"."""
    return group.split("/", 1)[0] if group else "unknown"


def _fraction(seed: int, group: str) -> float:
    return int(hashlib.sha1(f"split|{seed}|{group}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
