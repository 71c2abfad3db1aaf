"""Keep / reject from stored scores: TOML thresholds, no model, every rejection with a reason, and the funnel."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from importlib import resources
from pathlib import Path

import numpy as np

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from manifests.errors import ConfigError
from manifests.layers import SampleKind
from manifests.schema import KIND, RULE_COLUMNS, SAMPLE_ID

DEFAULT_POLICY = "default_policy.toml"
_RULE_KEYS = {"score", "below", "above", "allow", "why"}


class Op(str, Enum):
    BELOW = "<"
    ABOVE = ">"


@dataclass(frozen=True)
class Rule:
    """Fires when `score <op> bound`; for the sample kinds in `allow` it only flags."""

    score: str
    op: Op
    bound: float
    allow: frozenset[SampleKind] = frozenset()
    why: str = ""

    @cached_property
    def name(self) -> str:
        return f"{self.score}{self.op.value}{self.bound:g}"

    def fires(self, value: float | None) -> bool:
        if value is None or value != value:  # null (or NaN) scores never fire
            return False
        return value < self.bound if self.op is Op.BELOW else value > self.bound


@dataclass(frozen=True)
class Decision:
    keep: bool
    reject_reasons: list[str]
    flags: list[str]
    duplicate_of: str | None = None


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    duplicate_cosine: float | None = None  # None: no near-duplicate rule
    source: str = "default"
    text: str = ""  # the TOML it was read from, written beside the dataset it was applied to

    @classmethod
    def default(cls) -> Policy:
        text = resources.files("filters").joinpath(DEFAULT_POLICY).read_text(encoding="utf-8")
        return cls.from_toml(text, source="default")

    @classmethod
    def load(cls, path: str | Path | None) -> Policy:
        """The policy in `path`, or the shipped default when `path` is None."""
        if path is None:
            return cls.default()
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--policy: {path} is not a file")
        return cls.from_toml(path.read_text(encoding="utf-8"), source=str(path))

    @classmethod
    def from_toml(cls, text: str, source: str) -> Policy:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--policy {source}: not valid TOML: {exc}") from exc
        unknown = set(data) - {"rule", "duplicates"}
        if unknown:
            raise ConfigError(f"--policy {source}: unknown tables {sorted(unknown)} (expected [[rule]], [duplicates])")
        rules = tuple(_rule(entry, source, i) for i, entry in enumerate(data.get("rule", []), start=1))
        duplicates = data.get("duplicates", {})
        if set(duplicates) - {"clip_cosine_above"}:
            raise ConfigError(f"--policy {source}: [duplicates] takes only clip_cosine_above")
        cosine = duplicates.get("clip_cosine_above")
        if cosine is not None and not (isinstance(cosine, int | float) and -1.0 <= cosine <= 1.0):
            raise ConfigError(f"--policy {source}: [duplicates] clip_cosine_above must be a number in [-1, 1]")
        return cls(rules=rules, duplicate_cosine=None if cosine is None else float(cosine), source=source, text=text)

    @property
    def duplicate_rule(self) -> str | None:
        return None if self.duplicate_cosine is None else f"clip_duplicate_cosine>{self.duplicate_cosine:g}"

    def rule(self, score: str) -> list[Rule]:
        return [rule for rule in self.rules if rule.score == score]

    def decide(self, row: Mapping) -> Decision:
        """Rules on one row's scores (no near-duplicate search, which needs the whole dataset)."""
        reasons, flags = [], []
        for rule in self.rules:
            if rule.fires(row.get(rule.score)):
                (flags if SampleKind(row[KIND]) in rule.allow else reasons).append(rule.name)
        return Decision(keep=not reasons, reject_reasons=reasons, flags=flags)

    def apply(self, rows: Sequence[Mapping], embeddings: Sequence[Sequence[float] | None] | None = None
              ) -> list[Decision]:
        """Decisions for a whole dataset: the rules per row, then near-duplicates among the kept rows."""
        decisions = [self.decide(row) for row in rows]
        if self.duplicate_cosine is None or embeddings is None:
            return decisions
        duplicates = near_duplicates([row[SAMPLE_ID] for row in rows], embeddings,
                                     [d.keep for d in decisions], self.duplicate_cosine)
        out = []
        for decision, duplicate in zip(decisions, duplicates):
            if duplicate is not None:
                decision = Decision(False, decision.reject_reasons + [self.duplicate_rule], decision.flags, duplicate)
            out.append(decision)
        return out


def _rule(entry: Mapping, source: str, index: int) -> Rule:
    where = f"--policy {source}: rule {index}"
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: must be a table")
    unknown = set(entry) - _RULE_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)} (expected {sorted(_RULE_KEYS)})")
    score = entry.get("score")
    if score not in RULE_COLUMNS:
        raise ConfigError(f"{where}: score {score!r} is not a score column; known: {', '.join(RULE_COLUMNS)}")
    bounds = [(op, entry[key]) for op, key in ((Op.BELOW, "below"), (Op.ABOVE, "above")) if key in entry]
    if len(bounds) != 1:
        raise ConfigError(f"{where} ({score}): give exactly one of `below` or `above`")
    op, bound = bounds[0]
    if isinstance(bound, bool) or not isinstance(bound, int | float):
        raise ConfigError(f"{where} ({score}): the bound must be a number, got {bound!r}")
    kinds = {kind.value for kind in SampleKind}
    allow = entry.get("allow", [])
    if not isinstance(allow, list) or set(allow) - kinds:
        raise ConfigError(f"{where} ({score}): `allow` must list sample kinds from {sorted(kinds)}")
    return Rule(score, op, float(bound), frozenset(SampleKind(k) for k in allow), str(entry.get("why", "")))


def near_duplicates(sample_ids: Sequence[str], embeddings: Sequence[Sequence[float] | None],
                    kept: Sequence[bool], threshold: float) -> list[str | None]:
    """For each sample, the kept sample it nearly duplicates (cosine > threshold), or None.

    Kept samples are visited in sample_id order and each becomes a representative unless it duplicates
    an earlier one, so `duplicate_of` always names a sample that stays kept. Rejected samples are only
    marked, never representatives. Unit-norm embeddings are assumed (they are stored normalised).
    """
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


@dataclass(frozen=True)
class FunnelStep:
    rule: str
    score: str
    why: str
    alone: int  # samples this rule alone would reject
    left: int  # samples still kept after this rule and every rule above it
    flagged: int  # samples it fired on but their kind allows
    unscored: int  # samples whose score is null, so the rule could not fire


@dataclass(frozen=True)
class Funnel:
    total: int
    kept: int
    steps: list[FunnelStep]
    unscored_why: dict[str, str] = field(default_factory=dict)  # score column -> why it is null

    def as_dict(self) -> dict:
        return {"total": self.total, "kept": self.kept, "steps": [step.__dict__ for step in self.steps],
                "unscored_why": self.unscored_why}

    def as_text(self) -> str:
        width = max([len("rule")] + [len(step.rule) for step in self.steps])
        lines = [f"{'rule':<{width}}  {'drops alone':>11}  {'left after':>10}  {'flagged':>7}  {'unscored':>8}",
                 f"{'(all samples)':<{width}}  {'':>11}  {self.total:>10}  {'':>7}  {'':>8}"]
        lines += [f"{s.rule:<{width}}  {s.alone:>11}  {s.left:>10}  {s.flagged:>7}  {s.unscored:>8}"
                  for s in self.steps]
        lines.append(f"kept {self.kept} of {self.total} samples")
        grouped: dict[tuple[str, int], list[str]] = {}
        for score, why in self.unscored_why.items():
            count = max((s.unscored for s in self.steps if s.score == score), default=0)
            if count:
                grouped.setdefault((why, count), []).append(score)
        for (why, count), scores in grouped.items():
            lines.append(f"unscored {', '.join(scores)} ({count} samples): {why}")
        return "\n".join(lines)


def funnel(rows: Sequence[Mapping], decisions: Sequence[Decision], policy: Policy,
           unscored_why: Mapping[str, str] | None = None,
           embeddings: Sequence[Sequence[float] | None] | None = None) -> Funnel:
    """Per rule (in policy order): how many it drops alone, how many are left cumulatively, flags, unscored.

    `embeddings`: the rows' CLIP embeddings, as given to `Policy.apply` (None: no sample has one)."""
    alive = [True] * len(rows)
    steps = []
    for rule in policy.rules:
        fired = [rule.name in d.reject_reasons for d in decisions]
        alive = [a and not f for a, f in zip(alive, fired)]
        steps.append(FunnelStep(
            rule=rule.name, score=rule.score, why=rule.why, alone=sum(fired), left=sum(alive),
            flagged=sum(rule.name in d.flags for d in decisions),
            unscored=sum(row.get(rule.score) is None for row in rows),
        ))
    if policy.duplicate_rule is not None:
        fired = [d.duplicate_of is not None for d in decisions]
        alive = [a and not f for a, f in zip(alive, fired)]
        steps.append(FunnelStep(
            rule=policy.duplicate_rule, score="clip_embedding", why="near-duplicate of a kept sample",
            alone=sum(fired), left=sum(alive), flagged=0,
            unscored=len(rows) if embeddings is None else sum(not embedding for embedding in embeddings),
        ))
    scored = {step.score for step in steps if step.unscored}
    why = {score: text for score, text in (unscored_why or {}).items() if score in scored}
    return Funnel(total=len(rows), kept=sum(d.keep for d in decisions), steps=steps, unscored_why=why)
