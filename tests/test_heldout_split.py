"""Held out by identity: a sample's split is that of its foreground's object and of its background, wherever and under
whatever file name they appear (`datagen.plan`, `manifests.identity`)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import write_layered, write_video

from datagen.build import build
from datagen.config import BuildConfig
from datagen.pipeline import LocalRunner
from manifests import identity
from manifests.dataset import open_dataset
from manifests.schema import GROUP_BACKGROUND, GROUP_FOREGROUND, KIND, SPLIT

OBJECTS = [f"disk/d{k}" for k in range(6)]
SCENES = [f"room/r{k}" for k in range(6)]


def _sidecar(path: Path, **fields) -> None:
    path.with_suffix(".json").write_text(json.dumps(fields))


def _source(root: Path) -> Path:
    """Six objects, each filmed twice under two file names in two rooms and shown once in a layered image (another
    file, another background), plus six background clips of their own scenes."""
    for k, group in enumerate(OBJECTS):
        for take in range(2):
            video = write_video(root / "takes" / f"take_{k}_{take}.mp4", num_frames=16, seed=10 * k + take)
            _sidecar(video, foreground=f"disk {k}", group=group, background_group=SCENES[(k + take) % 6])
        write_layered(root / "posters" / f"poster_{k}", seed=100 + k,
                      captions={"foreground": f"disk {k}", "background": "a wall", "blended": f"disk {k} on a wall",
                                "group": group, "background_group": SCENES[(k + 3) % 6]})
    for k, scene in enumerate(SCENES):
        plate = write_video(root / "plates" / f"plate_{k}.mp4", num_frames=16, seed=200 + k)
        _sidecar(plate, role="background", background=f"room {k}", group=scene)
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, BuildConfig]:
    root = tmp_path_factory.mktemp("heldout")
    config = BuildConfig(frames=4, fps=8.0, size=(32, 32), seed=3, val_fraction=0.5, backgrounds_per_foreground=2,
                         matting="bgsub", captioner="sidecar", clip="none")
    build(str(_source(root / "src")), root / "ds", config, LocalRunner(progress=False))
    return root / "ds", config


def test_each_object_and_each_background_stays_on_one_side_in_every_kind(built):
    dataset, config = built
    rows = open_dataset(dataset).manifest(columns=[KIND, SPLIT, GROUP_FOREGROUND, GROUP_BACKGROUND]).to_pylist()
    assert {row[SPLIT] for row in rows} == {"train", "val"}
    sides, kinds = defaultdict(set), defaultdict(set)
    for row in rows:
        for group in (row[GROUP_FOREGROUND], row[GROUP_BACKGROUND]):
            sides[group].add(row[SPLIT])
            assert row[SPLIT] == identity.split_for([group], config.seed, config.val_fraction)
        kinds[row[GROUP_FOREGROUND]].add(row[KIND])
    assert all(len(split) == 1 for split in sides.values()), dict(sides)
    # the same object, from two video files and a layered image, is on one side in every kind it was made into
    assert any({"video_copy_paste", "image_frozen"} <= made for made in kinds.values())
    assert set(sides) <= set(OBJECTS) | set(SCENES)


def test_a_pairing_that_would_straddle_the_split_is_not_made_and_says_why(built):
    dataset, config = built
    inputs = pq.read_table(dataset / "inputs.parquet").to_pylist()
    posters = [row for row in inputs if "posters/" in row["relative_path"]]
    straddling = [row for row in posters
                  if identity.split_for([row["group"], row["background_group"]], config.seed, 0.5) is None]
    assert straddling, "the seed should leave at least one poster whose object and background disagree"
    for row in straddling:
        assert row["state"] == "unused" and not row["sample_ids"]
        assert "fall on two sides of the split" in row["message"]
    for row in inputs:
        assert (row["state"] == "unused") == (not row["sample_ids"]), row


def test_the_family_of_a_group_is_its_part_before_the_first_slash():
    assert identity.family_of("shape/star-03") == "shape"
    assert identity.family_of("a/b/c") == "a"
    assert identity.family_of("plain") == "plain"
    assert identity.family_of(None) == "unknown"


def test_heldout_overlap_counts_val_samples_that_share_an_identity_with_training(built):
    assert identity.heldout_overlap([("train", "o1", "b1"), ("val", "o2", "b2"), ("val", "o3", "b3")]) == 0
    assert identity.heldout_overlap([("train", "o1", "b1"), ("val", "o1", "b2"), ("val", "o3", "b1")]) == 2
    assert identity.heldout_overlap([("train", "o1", "b1"), ("val", None, None)]) == 1  # no identity: not held out
    dataset, _ = built
    rows = open_dataset(dataset).manifest(columns=[SPLIT, GROUP_FOREGROUND, GROUP_BACKGROUND]).to_pylist()
    assert identity.heldout_overlap((r[SPLIT], r[GROUP_FOREGROUND], r[GROUP_BACKGROUND]) for r in rows) == 0
