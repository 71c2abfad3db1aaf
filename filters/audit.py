"""`validate` with the policy: the contract checks of `manifests.validate`, plus that every kept sample is one the
dataset's own policy keeps (its decision recomputed from the recomposition PSNR of the files as written)."""

from __future__ import annotations

from collections.abc import Mapping

from filters.apply import read_policy
from filters.policy import Policy
from manifests.dataset import DatasetLike, open_dataset
from manifests.schema import KEEP, RECOMPOSE_PSNR
from manifests.validate import Report, RowCheck, validate


def policy_check(policy: Policy) -> RowCheck:
    """A row check: a kept sample that `policy` would reject (with the recomputed recomposition PSNR) is a problem."""

    def check(row: dict, recompose_psnr: float) -> list[str]:
        decision = policy.decide({**row, RECOMPOSE_PSNR: recompose_psnr})
        if row[KEEP] and not decision.keep:
            return [f"sample {row['sample_id']}: kept, but the dataset's policy rejects it: "
                    f"{', '.join(decision.reject_reasons)}"]
        return []

    return check


def validate_dataset(dataset: DatasetLike, progress: bool = False, allow_empty: bool = False,
                     min_samples: Mapping[str, int] | None = None) -> Report:
    """Every problem of the dataset (a folder, a pyarrow filesystem URI or an open handle): the contract's, and kept
    samples its policy (`DS/policy.toml`) rejects."""
    dataset = open_dataset(dataset)
    return validate(dataset, progress, allow_empty, min_samples, row_checks=[policy_check(read_policy(dataset))])
