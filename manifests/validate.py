"""`validate`: the schema, every referenced file (exists, decodes, frame count, size), recomposition, accounting.

Checks of a row that need more than the contract (the policy's decision, in `filters.audit`) come in as `RowCheck`s.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from manifests import video_io
from manifests.dataset import Dataset, DatasetLike, open_dataset
from manifests.errors import DatasetError, StorageError
from manifests.layers import InputState, Layer
from manifests.metrics import recomposition_psnr
from manifests.schema import (
    FAILURE_SCHEMA,
    FAILURES_FILE,
    INPUT_ID,
    INPUT_SCHEMA,
    INPUTS_FILE,
    KEEP,
    KIND,
    RECOMPOSE_PSNR,
    REJECT_REASONS,
    SAMPLE_ID,
    SAMPLE_SCHEMA,
    SCHEMA_VERSION,
    STATE,
    URI,
    uri_column,
)

PSNR_TOLERANCE_DB = 0.5  # stored vs recomputed recomposition PSNR
# A check of one manifest row, given the recomposition PSNR recomputed from its files: the problems it finds.
RowCheck = Callable[[dict, float], list[str]]


@dataclass
class Report:
    samples: int = 0
    files: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def validate(dataset: DatasetLike, progress: bool = False, allow_empty: bool = False,
             min_samples: Mapping[str, int] | None = None, row_checks: Sequence[RowCheck] = ()) -> Report:
    """Every problem of the dataset (a folder, a pyarrow filesystem URI or an open handle; a remote dataset's media
    are fetched into its local copy to be decoded). A dataset with no sample is a problem unless `allow_empty`;
    `min_samples` (sample kind -> count) says how many samples of a kind it must hold at least."""
    dataset = open_dataset(dataset)
    report = Report()
    try:
        summary = dataset.summary()
        table = dataset.manifest()
    except (DatasetError, StorageError, ValueError) as exc:
        report.problems.append(str(exc))
        return report
    _check_schemas(dataset, report)
    rows = table.to_pylist()
    report.samples = len(rows)
    if not rows and not allow_empty:
        report.problems.append(f"{dataset.uri}: the manifest has no samples (see failures.parquet and inputs.parquet "
                               "for why; pass --allow-empty if that is expected)")
    kinds = Counter(row[KIND] for row in rows)
    report.problems += [f"{kinds.get(kind, 0)} {kind} samples, expected at least {count}"
                        for kind, count in sorted((min_samples or {}).items()) if kinds.get(kind, 0) < count]
    duplicates = [sid for sid, n in Counter(r[SAMPLE_ID] for r in rows).items() if n > 1]
    report.problems += [f"sample {sid}: appears more than once" for sid in duplicates]
    for row in tqdm(rows, desc="validate", unit="sample", disable=not progress):
        report.problems += _check_sample(dataset, row, report, row_checks)
    _check_accounting(dataset, summary, len(rows), report)
    return report


def _check_schemas(dataset: Dataset, report: Report) -> None:
    expected = {"manifest": SAMPLE_SCHEMA, "failures": FAILURE_SCHEMA, "inputs": INPUT_SCHEMA}
    for name in [*dataset.part_files(), FAILURES_FILE, INPUTS_FILE]:
        schema = dataset.schema(name)
        if schema is None:  # no failures or inputs table
            continue
        meta = schema.metadata or {}
        table = meta.get(b"layerflow.table", b"").decode()
        if meta.get(b"layerflow.schema_version", b"").decode() != SCHEMA_VERSION:
            report.problems.append(f"{name.rpartition('/')[2]}: schema version is not {SCHEMA_VERSION}")
        if table not in expected or not schema.remove_metadata().equals(expected[table].remove_metadata()):
            report.problems.append(f"{name}: columns or types differ from the {table or '?'} schema")


def _check_sample(dataset: Dataset, row: dict, report: Report, row_checks: Sequence[RowCheck]) -> list[str]:
    sid = row[SAMPLE_ID]
    layers = {}
    for layer in Layer:
        try:
            path = dataset.media(row[uri_column(layer)])
        except (DatasetError, StorageError) as exc:  # an unsafe path; a remote file that is missing or unreadable
            return [f"sample {sid}: {exc}"]
        if not path.is_file():
            return [f"sample {sid}: {layer.value} file missing: {row[uri_column(layer)]}"]
        try:
            layers[layer] = video_io.read_layer(path, layer)
        except Exception as exc:  # any decoder error is a problem to report, not a crash
            return [f"sample {sid}: {layer.value} does not decode: {str(exc).splitlines()[0] if str(exc) else exc}"]
        report.files += 1
    problems = []
    for layer, frames in layers.items():
        if frames.shape[0] != row["num_frames"] or frames.shape[1:3] != (row["height"], row["width"]):
            problems.append(f"sample {sid}: {layer.value} is {frames.shape[0]}x{frames.shape[1]}x{frames.shape[2]}, "
                            f"manifest says {row['num_frames']}x{row['height']}x{row['width']}")
    if problems:
        return problems
    value = recomposition_psnr(layers[Layer.FOREGROUND], layers[Layer.ALPHA], layers[Layer.BACKGROUND],
                               layers[Layer.BLENDED])
    stored = row[RECOMPOSE_PSNR]
    if stored is not None and abs(value - stored) > PSNR_TOLERANCE_DB:
        problems.append(f"sample {sid}: recomposition PSNR {value:.2f} dB differs from the stored {stored:.2f} dB")
    if not row[KEEP] and not row[REJECT_REASONS]:
        problems.append(f"sample {sid}: rejected without a reason")
    for check in row_checks:
        problems += check(row, value)
    return problems


def _check_accounting(dataset: Dataset, summary: dict, samples: int, report: Report) -> None:
    inputs = dataset.inputs()
    counts = summary.get("inputs", {})
    if inputs.num_rows != counts.get("discovered"):
        report.problems.append(f"inputs table has {inputs.num_rows} rows, summary says {counts.get('discovered')} "
                               "discovered")
    if counts.get("accounted") != counts.get("discovered"):
        report.problems.append(f"input states add up to {counts.get('accounted')}, not {counts.get('discovered')}")
    named = set(dataset.failures().column(INPUT_ID).to_pylist())
    report.problems += [f"input {row[URI]}: failed, but no row of {FAILURES_FILE} names it"
                        for row in inputs.to_pylist() if row[STATE] == InputState.FAILED.value
                        and row[INPUT_ID] not in named]
    total = summary.get("samples", {}).get("total")
    if total != samples:
        report.problems.append(f"manifest has {samples} samples, summary says {total}")
