"""Keep / reject from stored scores: thresholds only, no model, every rejection with a reason."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Policy:
    """Default thresholds; a score that is null never rejects a sample."""

    alpha_coverage_empty: float = 0.002  # every frame covers less than this: nothing to learn from
    alpha_coverage_full: float = 0.98  # every frame covers more than this: no background visible
    recompose_psnr_min: float = 30.0  # dB, the stored files must recompose

    def reasons(self, row: dict) -> list[str]:
        """The reasons this row is rejected (empty: keep). Reasons read like `score<op>threshold`."""
        out = []
        high = row.get("alpha_coverage_max")
        if high is not None and high < self.alpha_coverage_empty:
            out.append(f"alpha_coverage_max<{self.alpha_coverage_empty:g}")
        low = row.get("alpha_coverage_min")
        if low is not None and low > self.alpha_coverage_full:
            out.append(f"alpha_coverage_min>{self.alpha_coverage_full:g}")
        value = row.get("recompose_psnr")
        if value is not None and value < self.recompose_psnr_min:
            out.append(f"recompose_psnr<{self.recompose_psnr_min:g}")
        return out
