"""`validate`: the schema, every referenced file (exists, decodes, frame count, size), recomposition (of the flattened
view, and of a sample's foreground layers), accounting.

Checks of a row that need more than the contract (the policy's decision, in `filters.audit`) come in as `RowCheck`s.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from manifests import video_io
from manifests.dataset import Dataset, DatasetLike, open_dataset
from manifests.errors import DatasetError, StorageError
from manifests.layers import InputState, Layer, composite_over, flatten
from manifests.metrics import psnr, recomposition_psnr
from manifests.schema import (
    FAILURE_SCHEMA,
    FAILURES_FILE,
    INPUT_ID,
    INPUT_SCHEMA,
    INPUTS_FILE,
    KEEP,
    KIND,
    LAYERS_CAPTION,
    LAYERS_URI_ALPHA,
    LAYERS_URI_FOREGROUND,
    PLATE_INVENTED_URI,
    RECOMPOSE_PSNR,
    REJECT_REASONS,
    SAMPLE_ID,
    SAMPLE_SCHEMA,
    SCHEMA_VERSION,
    STATE,
    URI,
    foreground_layers,
    uri_column,
)

PSNR_TOLERANCE_DB = 0.5  # stored vs recomputed recomposition PSNR
# Several foreground layers: their files recomposed over the background file must give the blended file back about as
# well as the flattened view's files do (`recompose_psnr`). The RGB files are lossy H.264 and each layer's colour file
# adds its own coding noise where the flattened view has one foreground file: measured 0-1.6 dB lower with 2-4
# layers (256x256, crf 18), hence a margin; a wrong layer costs far more. Alpha is lossless: the flattened alpha
# recomputed from the layer alphas must be the stored one up to a rounding step.
LAYERS_PSNR_MARGIN_DB = 3.0
LAYERS_ALPHA_TOLERANCE = 1  # grey levels
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


def _read(dataset: Dataset, row: dict, uri: str, layer: Layer, what: str, report: Report) -> np.ndarray | str:
    """A media file of a row decoded, or why it cannot be (missing, unsafe path, does not decode)."""
    sid = row[SAMPLE_ID]
    try:
        path = dataset.media(uri)
    except (DatasetError, StorageError) as exc:  # an unsafe path; a remote file that is missing or unreadable
        return f"sample {sid}: {exc}"
    if not path.is_file():
        return f"sample {sid}: {what} file missing: {uri}"
    try:
        frames = video_io.read_layer(path, layer)
    except Exception as exc:  # any decoder error is a problem to report, not a crash
        return f"sample {sid}: {what} does not decode: {str(exc).splitlines()[0] if str(exc) else exc}"
    report.files += 1
    return frames


def _shape_problem(row: dict, frames: np.ndarray, what: str) -> list[str]:
    if frames.shape[0] != row["num_frames"] or frames.shape[1:3] != (row["height"], row["width"]):
        return [f"sample {row[SAMPLE_ID]}: {what} is {frames.shape[0]}x{frames.shape[1]}x{frames.shape[2]}, "
                f"manifest says {row['num_frames']}x{row['height']}x{row['width']}"]
    return []


def _check_sample(dataset: Dataset, row: dict, report: Report, row_checks: Sequence[RowCheck]) -> list[str]:
    sid = row[SAMPLE_ID]
    layers = {}
    for layer in Layer:
        frames = _read(dataset, row, row[uri_column(layer)], layer, layer.value, report)
        if isinstance(frames, str):
            return [frames]
        layers[layer] = frames
    problems = [problem for layer, frames in layers.items() for problem in _shape_problem(row, frames, layer.value)]
    if problems:
        return problems
    value = recomposition_psnr(layers[Layer.FOREGROUND], layers[Layer.ALPHA], layers[Layer.BACKGROUND],
                               layers[Layer.BLENDED])
    stored = row[RECOMPOSE_PSNR]
    if stored is not None and abs(value - stored) > PSNR_TOLERANCE_DB:
        problems.append(f"sample {sid}: recomposition PSNR {value:.2f} dB differs from the stored {stored:.2f} dB")
    if not row[KEEP] and not row[REJECT_REASONS]:
        problems.append(f"sample {sid}: rejected without a reason")
    problems += _check_layers(dataset, row, layers, value, report)
    if row.get(PLATE_INVENTED_URI):  # a decomposed sample's invented-plate mask: there, and frame for frame
        invented = _read(dataset, row, row[PLATE_INVENTED_URI], Layer.ALPHA, "plate_invented", report)
        problems += [invented] if isinstance(invented, str) else _shape_problem(row, invented, "plate_invented")
    for check in row_checks:
        problems += check(row, value)
    return problems


def _check_layers(dataset: Dataset, row: dict, flat: dict[Layer, np.ndarray], flat_psnr: float,
                  report: Report) -> list[str]:
    """A sample's foreground layers: one layer is its foreground and alpha files themselves; several recompose the
    blended file over the background file (within `LAYERS_PSNR_MARGIN_DB` of the flattened view's `flat_psnr`), and
    flatten to the stored alpha."""
    sid = row[SAMPLE_ID]
    entries = foreground_layers(row)
    if len({len(row[name] or []) for name in (LAYERS_URI_FOREGROUND, LAYERS_URI_ALPHA, LAYERS_CAPTION)}) > 1:
        return [f"sample {sid}: the layer lists differ in length"]
    if len(entries) == 1:
        own = (row[uri_column(Layer.FOREGROUND)], row[uri_column(Layer.ALPHA)])
        return [] if entries[0][:2] == own else [f"sample {sid}: its one layer is not its foreground and alpha files"]
    colours, alphas = [], []
    for index, (colour_uri, alpha_uri, _) in enumerate(entries):
        colour = _read(dataset, row, colour_uri, Layer.FOREGROUND, f"layer {index} foreground", report)
        alpha = _read(dataset, row, alpha_uri, Layer.ALPHA, f"layer {index} alpha", report)
        problems = [found for found in (colour, alpha) if isinstance(found, str)]
        if problems:
            return problems
        problems = (_shape_problem(row, colour, f"layer {index} foreground")
                    + _shape_problem(row, alpha, f"layer {index} alpha"))
        if problems:
            return problems
        colours.append(colour)
        alphas.append(alpha)
    problems = []
    alpha_error = int(np.abs(flatten(colours, alphas)[1].astype(np.int16) - flat[Layer.ALPHA]).max())
    if alpha_error > LAYERS_ALPHA_TOLERANCE:
        problems.append(f"sample {sid}: its {len(entries)} layers flatten to an alpha up to {alpha_error} grey levels "
                        f"from the stored alpha (at most {LAYERS_ALPHA_TOLERANCE})")
    value = psnr(flat[Layer.BLENDED], composite_over(flat[Layer.BACKGROUND], colours, alphas))
    if value < flat_psnr - LAYERS_PSNR_MARGIN_DB:
        problems.append(f"sample {sid}: its {len(entries)} layers recompose the blended layer at {value:.2f} dB, its "
                        f"flattened view at {flat_psnr:.2f} dB (at most {LAYERS_PSNR_MARGIN_DB:g} dB lower)")
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
