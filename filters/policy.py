"""Keep / reject from stored scores: TOML thresholds, no model, every rejection with a reason, and the funnel."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from filters.duplicates import Search, duplicate_rows, embedding_matrix
from manifests.errors import ConfigError
from manifests.layers import SampleKind
from manifests.schema import DUPLICATE_OF, FLAGS, KEEP, KIND, REJECT_REASONS, RULE_COLUMNS, SAMPLE_ID

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
    duplicate_search: Search = Search.AUTO  # exact, or LSH-proposed pairs with exact cosines (filters.duplicates)
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
        if set(duplicates) - {"clip_cosine_above", "search"}:
            raise ConfigError(f"--policy {source}: [duplicates] takes only clip_cosine_above and search")
        cosine = duplicates.get("clip_cosine_above")
        if cosine is not None and not (isinstance(cosine, int | float) and -1.0 <= cosine <= 1.0):
            raise ConfigError(f"--policy {source}: [duplicates] clip_cosine_above must be a number in [-1, 1]")
        searches = [search.value for search in Search]
        if duplicates.get("search", Search.AUTO.value) not in searches:
            raise ConfigError(f"--policy {source}: [duplicates] search must be one of {searches}")
        return cls(rules=rules, duplicate_cosine=None if cosine is None else float(cosine),
                   duplicate_search=Search(duplicates.get("search", Search.AUTO.value)), source=source, text=text)

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

    def hits(self, table: pa.Table) -> RuleHits:
        """`decide` for every row of a table at once (its KIND and the score columns the rules read)."""
        kinds = table.column(KIND)
        for kind in pc.unique(kinds).to_pylist():
            SampleKind(kind)  # an unknown kind is an error, as in `decide`
        rejects = np.zeros((table.num_rows, len(self.rules)), bool)
        flags = np.zeros_like(rejects)
        unscored = np.zeros(len(self.rules), np.int64)
        for r, rule in enumerate(self.rules):
            column = table.column(rule.score)
            # float64, as in `decide` (a float32 score against a Python float bound); null -> NaN, which never fires
            values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
            fires = values < rule.bound if rule.op is Op.BELOW else values > rule.bound
            allowed = pc.is_in(kinds, pa.array([kind.value for kind in rule.allow], pa.string())).to_numpy(
                zero_copy_only=False)
            rejects[:, r], flags[:, r] = fires & ~allowed, fires & allowed
            unscored[r] = column.null_count
        return RuleHits(rejects, flags, unscored)

    def outcome(self, hits: RuleHits, sample_ids: pa.ChunkedArray | pa.Array, embeddings: np.ndarray | None = None,
                present: np.ndarray | None = None) -> Outcome:
        """Decisions for a whole dataset: the rules' `hits`, then near-duplicates among the kept rows.

        `embeddings` (N, D) float32 and `present` (N,) bool (`filters.duplicates.embedding_matrix`); None: no
        sample has one."""
        rows = len(sample_ids)
        duplicate_of = np.full(rows, -1, np.int64)
        without = rows
        if self.duplicate_cosine is not None and embeddings is not None:
            without = rows - int(present.sum())
            duplicate_of = duplicate_rows(sample_ids, embeddings, present, ~hits.rejects.any(axis=1),
                                          self.duplicate_cosine, self.duplicate_search)
        ids = sample_ids if isinstance(sample_ids, pa.ChunkedArray) else pa.chunked_array([sample_ids])
        return Outcome(self, ids, hits, duplicate_of, without)

    def apply(self, rows: Sequence[Mapping], embeddings: Sequence[Sequence[float] | None] | None = None
              ) -> list[Decision]:
        """`outcome` for rows in memory: one Decision per row."""
        scores = sorted({rule.score for rule in self.rules})
        table = pa.table({KIND: pa.array([row[KIND] for row in rows], pa.string()),
                          **{score: pa.array([row.get(score) for row in rows], pa.float64()) for score in scores}})
        matrix, present = None, None
        if embeddings is not None:
            matrix, present = embedding_matrix(pa.array([None if e is None else list(e) for e in embeddings],
                                                        pa.list_(pa.float32())))
        ids = pa.array([row[SAMPLE_ID] for row in rows], pa.string())
        return self.outcome(self.hits(table), ids, matrix, present).decisions()


@dataclass(frozen=True)
class RuleHits:
    """What the rules say about each sample: one column per rule, in policy order."""

    rejects: np.ndarray  # (N, R) bool: the rule fired and rejects
    flags: np.ndarray  # (N, R) bool: the rule fired but the sample's kind allows it
    unscored: np.ndarray  # (R,) int: samples whose score is null, so the rule could not fire

    @classmethod
    def concat(cls, parts: Sequence[RuleHits], rules: int) -> RuleHits:
        if not parts:
            return cls(np.zeros((0, rules), bool), np.zeros((0, rules), bool), np.zeros(rules, np.int64))
        return cls(np.concatenate([p.rejects for p in parts]), np.concatenate([p.flags for p in parts]),
                   np.sum([p.unscored for p in parts], axis=0))


@dataclass(frozen=True)
class Outcome:
    """A policy's decisions for a whole dataset, as columns: row i of each is sample i."""

    policy: Policy
    sample_ids: pa.ChunkedArray
    hits: RuleHits
    duplicate_of: np.ndarray  # (N,) int: the row of the kept sample this one nearly duplicates, -1 if none
    without_embedding: int  # samples the near-duplicate rule could not test

    @property
    def rejects(self) -> np.ndarray:
        """(N, R [+1]) bool: the rules, then the near-duplicate rule if the policy has one."""
        if self.policy.duplicate_rule is None:
            return self.hits.rejects
        return np.column_stack([self.hits.rejects, self.duplicate_of >= 0])

    @property
    def keep(self) -> np.ndarray:
        return ~self.rejects.any(axis=1)

    def columns(self, start: int = 0, stop: int | None = None) -> dict[str, pa.Array]:
        """The decision columns (keep, reject_reasons, flags, duplicate_of) of rows [start, stop)."""
        rules = [rule.name for rule in self.policy.rules]
        rejects = self.rejects[start:stop]
        duplicate_of = self.duplicate_of[start:stop]
        return {
            KEEP: pa.array(~rejects.any(axis=1), pa.bool_()),
            REJECT_REASONS: _names(rejects, [*rules, *filter(None, [self.policy.duplicate_rule])]),
            FLAGS: _names(self.hits.flags[start:stop], rules),
            DUPLICATE_OF: self.sample_ids.take(pa.array(duplicate_of, mask=duplicate_of < 0)).combine_chunks(),
        }

    def decisions(self) -> list[Decision]:
        columns = {name: column.to_pylist() for name, column in self.columns().items()}
        return [Decision(*values) for values in zip(*(columns[name] for name in (KEEP, REJECT_REASONS, FLAGS,
                                                                                 DUPLICATE_OF)))]

    def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """How many samples each reject reason and each flag names (only those that named one)."""
        rules = [rule.name for rule in self.policy.rules]
        reasons, flags = Counter(), Counter()
        for name, count in zip([*rules, *filter(None, [self.policy.duplicate_rule])], self.rejects.sum(axis=0)):
            reasons[name] += int(count)
        for name, count in zip(rules, self.hits.flags.sum(axis=0)):
            flags[name] += int(count)
        return +reasons, +flags

    def funnel(self, unscored_why: Mapping[str, str] | None = None) -> Funnel:
        """Per rule (in policy order): how many it drops alone, how many are left cumulatively, flags, unscored."""
        policy, alive, steps = self.policy, np.ones(len(self.duplicate_of), bool), []
        for r, rule in enumerate(policy.rules):
            fired = self.hits.rejects[:, r]
            alive &= ~fired
            steps.append(FunnelStep(
                rule=rule.name, score=rule.score, why=rule.why, alone=int(fired.sum()), left=int(alive.sum()),
                flagged=int(self.hits.flags[:, r].sum()), unscored=int(self.hits.unscored[r]),
            ))
        if policy.duplicate_rule is not None:
            fired = self.duplicate_of >= 0
            alive &= ~fired
            steps.append(FunnelStep(
                rule=policy.duplicate_rule, score="clip_embedding", why="near-duplicate of a kept sample",
                alone=int(fired.sum()), left=int(alive.sum()), flagged=0, unscored=self.without_embedding,
            ))
        scored = {step.score for step in steps if step.unscored}
        why = {score: text for score, text in (unscored_why or {}).items() if score in scored}
        return Funnel(total=len(alive), kept=int(alive.sum()), steps=steps, unscored_why=why)


def _names(mask: np.ndarray, names: Sequence[str]) -> pa.ListArray:
    """(N, R) bool -> list<string>: for each row, the names of its True columns, in column order."""
    _, columns = np.nonzero(mask)  # row-major: grouped by row, columns ascending
    offsets = np.r_[0, np.cumsum(mask.sum(axis=1))].astype(np.int32)
    values = pa.DictionaryArray.from_arrays(pa.array(columns.astype(np.int32), pa.int32()),
                                            pa.array(list(names), pa.string())).dictionary_decode()
    return pa.ListArray.from_arrays(pa.array(offsets), values)


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
