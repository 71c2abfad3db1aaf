"""The manifest contract: explicit schema, safe paths, and readers that need no conversion."""

from __future__ import annotations

import duckdb
import polars as pl
import pyarrow.dataset as pads
import pytest

from datagen.build import build
from datagen.pipeline import LocalRunner
from manifests import io
from manifests.inspect import inspect_dataset
from manifests.schema import SAMPLE_SCHEMA, SCHEMA_VERSION, to_table


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
    assert table.num_rows == 3
    assert table.schema.field("frames_foreground").type == SAMPLE_SCHEMA.field("frames_foreground").type
    glob = str(dataset / "manifest" / "*.parquet")
    kinds = dict(duckdb.sql(f"select kind, count(*) from '{glob}' group by kind").fetchall())
    assert kinds == {"video_copy_paste": 2, "image_frozen": 1}
    frame = pl.read_parquet(glob)
    assert frame.height == 3 and frame["keep"].dtype == pl.Boolean
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
    assert info["samples"] == 3
    assert info["by_kind"] == {"video_copy_paste": 2, "image_frozen": 1}
    assert info["inputs"] == {"used": 3}
    assert len(info["examples"]) == 3
