"""The manifest contract: explicit schema, safe paths, and readers that need no conversion."""

from __future__ import annotations

import shutil

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from datagen.build import build
from datagen.pipeline import LocalRunner
from manifests import io
from manifests.dataset import open_dataset
from manifests.inspect import inspect_dataset
from manifests.schema import (
    ADAPTER,
    LAYERS_CAPTION,
    LAYERS_SOURCE,
    LAYERS_URI_ALPHA,
    LAYERS_URI_FOREGROUND,
    SAMPLE_SCHEMA,
    SCHEMA_VERSION,
    SOURCE_COMPANIONS,
    SOURCE_COMPOSITE_PSNR,
    foreground_layers,
    to_table,
)
from manifests.validate import validate

# What schema 4 added to the manifest; a manifest of schema 3 has every other column.
SCHEMA_4_COLUMNS = (ADAPTER, LAYERS_URI_FOREGROUND, LAYERS_URI_ALPHA, LAYERS_CAPTION, LAYERS_SOURCE, SOURCE_COMPANIONS,
                    SOURCE_COMPOSITE_PSNR)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from conftest import write_layered, write_video

    from datagen.config import BuildConfig

    root = tmp_path_factory.mktemp("manifest")
    write_video(root / "src" / "a.mp4", seed=1)
    write_video(root / "src" / "b.mp4", seed=2)
    write_layered(root / "src" / "l", seed=3)
    config = BuildConfig(frames=4, fps=8.0, size=(32, 48))
    build(str(root / "src"), root / "ds", config, LocalRunner(progress=False))
    return root / "ds"


def test_pyarrow_duckdb_and_polars_read_the_manifest_as_is(dataset):
    table = pads.dataset(dataset / "manifest", format="parquet").to_table()
    assert table.num_rows == 5  # a and b pasted on each other and each decomposed; l frozen
    assert table.schema.field("frames_foreground").type == SAMPLE_SCHEMA.field("frames_foreground").type
    glob = str(dataset / "manifest" / "*.parquet")
    kinds = dict(duckdb.sql(f"select kind, count(*) from '{glob}' group by kind").fetchall())
    assert kinds == {"video_copy_paste": 2, "image_frozen": 1, "video_decomposed": 2}
    frame = pl.read_parquet(glob)
    assert frame.height == 5 and frame["keep"].dtype == pl.Boolean
    assert sorted(frame["sample_id"].to_list()) == sorted(table.column("sample_id").to_pylist())


def test_files_carry_the_schema_version(dataset):
    import pyarrow.parquet as pq

    part = next((dataset / "manifest").glob("part-*.parquet"))
    assert pq.read_schema(part).metadata[b"layerflow.schema_version"].decode() == SCHEMA_VERSION


def test_rows_must_match_the_schema_exactly():
    row = {name: None for name in SAMPLE_SCHEMA.names}
    with pytest.raises(ValueError, match="unknown \\['typo'\\]"):
        to_table([{**row, "typo": 1}], SAMPLE_SCHEMA)
    row.pop("keep")
    with pytest.raises(ValueError, match="missing \\['keep'\\]"):
        to_table([row], SAMPLE_SCHEMA)


@pytest.mark.parametrize("uri", ["/etc/passwd", "../outside.mp4", "media/../../x.mp4", "", "media\\x.mp4"])
def test_media_paths_that_escape_the_root_are_refused(tmp_path, uri):
    with pytest.raises(io.DatasetError, match="not a relative path inside the dataset"):
        io.resolve_media(tmp_path, uri)


def test_part_names_are_deterministic(tmp_path, dataset):
    rows = io.read_manifest(dataset).to_pylist()
    first = io.write_manifest_part(tmp_path / "a", rows)
    second = io.write_manifest_part(tmp_path / "b", list(reversed(rows)))
    assert first.name == second.name and first.name.startswith("part-")


def test_reading_a_folder_that_is_not_a_dataset(tmp_path):
    with pytest.raises(io.DatasetError, match="not a layerflow dataset"):
        io.read_manifest(tmp_path)


def test_inspect_counts(dataset):
    info = inspect_dataset(dataset)
    assert info["samples"] == 5
    assert info["by_kind"] == {"video_copy_paste": 2, "image_frozen": 1, "video_decomposed": 2}
    assert info["inputs"] == {"used": 3}
    assert len(info["examples"]) == 3


def test_a_single_layer_sample_lists_its_own_foreground_as_its_one_layer(dataset):
    for row in io.read_manifest(dataset).to_pylist():
        assert foreground_layers(row) == [(row["uri_foreground"], row["uri_alpha"], row["caption_foreground"])]
        read_from = f"{row['source_foreground']}/foreground.png" if row[ADAPTER] == "fg_bg_folder" else \
            row["source_foreground"]
        assert row[LAYERS_SOURCE] == [read_from] and row[SOURCE_COMPANIONS] == []
    assert inspect_dataset(dataset)["by_adapter"] == {"copy_paste": 4, "fg_bg_folder": 1}


def test_a_manifest_of_schema_3_reads_with_the_new_columns_null(dataset, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(dataset, old)
    fields = [field for field in SAMPLE_SCHEMA if field.name not in SCHEMA_4_COLUMNS]
    schema_3 = pa.schema(fields, metadata={**SAMPLE_SCHEMA.metadata, b"layerflow.schema_version": b"3"})
    parts = sorted((old / "manifest").glob("part-*.parquet"))
    for part in parts:
        rows = pq.read_table(part).select(schema_3.names).to_pylist()
        pq.write_table(pa.Table.from_pylist(rows, schema=schema_3), part)
        assert not set(SCHEMA_4_COLUMNS) & set(pq.read_schema(part).names)

    rows = open_dataset(old).manifest().to_pylist()
    assert len(rows) == 5 and all(row[name] is None for row in rows for name in SCHEMA_4_COLUMNS)
    # the flattened foreground is the one layer of an old row
    assert [foreground_layers(row) for row in rows] == [
        [(row["uri_foreground"], row["uri_alpha"], row["caption_foreground"])] for row in rows]
    assert inspect_dataset(old)["by_adapter"] == {"unrecorded": 5}
    # validate names the old version and columns; every sample still checks out against its files
    assert validate(old).problems == [problem for part in parts for problem in (
        f"{part.name}: schema version is not {SCHEMA_VERSION}",
        f"manifest/{part.name}: columns or types differ from the manifest schema")]
