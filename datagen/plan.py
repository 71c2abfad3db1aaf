"""Plan the samples from the decoded inputs: which foreground goes on which background, and which real clips are
decomposed over their own clean plate; only the kinds the build asks for (`--kinds`).

Deterministic: a foreground's backgrounds are the candidates with the smallest hash of
(seed, foreground id, candidate id), so adding one input does not reshuffle every pairing.

Held out by identity: a sample's split is that of its foreground's object and of its background (`split_of`), so no
object or background of a `val` sample appears in any `train` sample. A foreground takes only backgrounds on its side;
a clip or layered image whose object and own background fall on two sides makes no sample of them (its row says so).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from datagen.config import BuildConfig
from datagen.rows import InputRow, SampleInput, SampleRow
from datagen.stages import can_be_foreground
from manifests.identity import split_for
from manifests.layers import InputKind, Role, SampleKind


def _hash(*parts: object) -> str:
    return hashlib.sha1("|".join(str(p) for p in parts).encode("utf-8")).hexdigest()


def sample_id(kind: SampleKind, fg_id: str, bg_id: str, config: BuildConfig) -> str:
    """Deterministic from the kind, the two input ids (their paths relative to the source and sizes: the same files
    anywhere give the same id) and the settings that change samples."""
    return _hash(kind.value, fg_id, bg_id, config.fingerprint())[:16]


def split_of(groups: Sequence[str], config: BuildConfig) -> str | None:
    """The split of a sample made from these identities: its foreground's object (`InputRow.group`: the user's group,
    else the content fingerprint) and its background (`InputRow.background_group`). None when they fall on two
    sides: such a sample would show a held-out object or background in training (or the reverse), so it is not made
    (`identity.split_for`)."""
    return split_for(groups, config.seed, config.val_fraction)


def plan_samples(inputs: list[InputRow], config: BuildConfig) -> list[SampleRow]:
    """Sample plans (rows for the compose stage) from the input rows that decoded."""
    ok = [row for row in inputs if row.ok]
    # With --backgrounds, backgrounds come from that pool only, even if some of it failed to decode.
    use_pool = any(row.item.pool == "backgrounds" for row in inputs)

    def background_candidate(row: InputRow) -> bool:
        if use_pool:
            return row.item.pool == "backgrounds"
        return row.item.role is not Role.FOREGROUND

    videos = [r for r in ok if r.kind.is_video and background_candidate(r)]
    stills = [r for r in ok if r.kind is InputKind.IMAGE and background_candidate(r)]
    plans = []
    for fg in ok:
        if not can_be_foreground(fg) or fg.matte_error is not None:
            continue
        # A real clip decomposed over its own clean plate, and a layered image over its own background, are made
        # only when the object and what is behind it fall on the same side of the split.
        own = split_of((fg.group, fg.background_group), config)
        if fg.plate_path is not None and own is not None:
            plans.append(_plan(SampleKind.VIDEO_DECOMPOSED, fg, fg, fg.clip_path, own, config))
        if fg.kind is InputKind.LAYERED_IMAGE:
            if own is not None:
                plans.append(_plan(SampleKind.IMAGE_FROZEN, fg, fg, fg.background_path, own, config))
            continue
        sample_kind = SampleKind.VIDEO_COPY_PASTE if fg.kind.is_video else SampleKind.IMAGE_FROZEN
        # Videos go on videos (stills only if there is no other video); stills on stills (else a video frame); only
        # backgrounds on the foreground's side of the split.
        side = split_of((fg.group,), config)
        preferred, fallback = (videos, stills) if fg.kind.is_video else (stills, videos)
        pool = [c for c in preferred if _pairable(fg, c, side, config)]
        pool = pool or [c for c in fallback if _pairable(fg, c, side, config)]
        ranked = sorted(pool, key=lambda c: _hash(config.seed, fg.input_id, c.input_id))
        for bg in ranked[: config.backgrounds_per_foreground]:
            plans.append(_plan(sample_kind, fg, bg, bg.clip_path, side, config))
    return sorted((plan for plan in plans if plan.kind in config.kinds), key=lambda plan: plan.sample_id)


def _pairable(fg: InputRow, candidate: InputRow, side: str, config: BuildConfig) -> bool:
    """Can `candidate` be the background of `fg`: another input, whose background identity is on fg's side."""
    return candidate.input_id != fg.input_id and split_of((candidate.background_group,), config) == side


def _plan(kind: SampleKind, fg: InputRow, bg: InputRow, bg_clip_path: str, split: str,
          config: BuildConfig) -> SampleRow:
    return SampleRow(sample_id=sample_id(kind, fg.input_id, bg.input_id, config), kind=kind, split=split,
                     fg=SampleInput.of(fg), bg=SampleInput.of(bg), bg_clip_path=bg_clip_path)
