"""`manifests.identity`: ids, content fingerprints that survive re-encoding, duplicates, groups and splits."""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
from conftest import moving_disk, shared_data, texture
from PIL import Image

from datagen.config import BuildConfig
from datagen.decode import decode
from datagen.plan import split_of
from datagen.sources import discover
from manifests import identity
from manifests.layers import InputKind


def jpeg(frame: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def test_a_reencoded_or_resized_frame_keeps_its_hash_and_another_frame_does_not():
    frame = texture(120, 160, seed=3)
    same = [jpeg(frame, 40), np.asarray(Image.fromarray(frame).resize((80, 60)))]
    assert all(bin(identity.frame_hash(frame) ^ identity.frame_hash(other)).count("1") <= 4 for other in same)
    others = [identity.frame_hash(texture(120, 160, seed=s)) for s in range(10, 30)]
    distances = [bin(identity.frame_hash(frame) ^ other).count("1") for other in others]
    assert min(distances) > identity.FRAME_TOLERANCE and 24 <= np.median(distances) <= 40


def test_fingerprints_match_across_encodings_and_never_between_a_still_and_a_clip():
    frames, _ = moving_disk(24, 96, 128, seed=2)
    positions = identity.fingerprint_positions(len(frames))
    assert positions == [3, 9, 15, 21]
    clip = identity.fingerprint([frames[i] for i in positions])
    reencoded = identity.fingerprint([jpeg(frames[i], 60) for i in positions])
    other, _ = moving_disk(24, 96, 128, seed=5)
    assert identity.same_content(clip, reencoded)
    assert not identity.same_content(clip, identity.fingerprint([other[i] for i in positions]))
    still = identity.fingerprint([frames[0]])
    assert identity.distance(clip, still) is None and not identity.same_content(clip, still)


def test_first_copies_points_every_copy_at_the_first_and_leaves_the_rest():
    a, b = (identity.fingerprint([texture(64, 64, seed=s)]) for s in (1, 2))
    a2 = identity.fingerprint([jpeg(texture(64, 64, seed=1), 50)])
    assert identity.first_copies([a, b, None, a2, a]) == [None, None, None, 0, 0]


def test_input_ids_hash_pool_relative_path_and_size():
    base = identity.input_id("source", "clips/x.mp4", 100)
    assert base == identity.input_id("source", "clips/x.mp4", 100)
    assert len({base, identity.input_id("backgrounds", "clips/x.mp4", 100),
                identity.input_id("source", "clips/y.mp4", 100), identity.input_id("source", "clips/x.mp4", 101)}) == 4


def test_split_for_puts_each_group_on_one_side_and_refuses_a_pair_that_straddles():
    groups = [f"g{i}" for i in range(400)]
    sides = {group: identity.split_for([group], seed=0, val_fraction=0.25) for group in groups}
    share = Counter(sides.values())["val"] / len(groups)
    assert 0.18 < share < 0.32 and set(sides.values()) == {"train", "val"}
    val = [g for g in groups if sides[g] == "val"]
    train = [g for g in groups if sides[g] == "train"]
    assert identity.split_for([val[0], val[1]], 0, 0.25) == "val"
    assert identity.split_for([train[0], train[1]], 0, 0.25) == "train"
    assert identity.split_for([val[0], train[0]], 0, 0.25) is None
    assert identity.split_for([val[0], val[0]], 0, 0.25) == "val"
    assert {identity.split_for([g], 1, 0.25) for g in groups} == {"train", "val"}  # another seed, another draw
    assert [identity.split_for([g], 1, 0.25) for g in groups] != [sides[g] for g in groups]


def test_split_of_a_sample_follows_its_groups():
    config = BuildConfig(val_fraction=0.5)
    assert split_of(("a",), config) == identity.split_for(["a"], config.seed, 0.5)
    assert {split_of((f"clip_{i}",), config) for i in range(40)} == {"train", "val"}
    assert split_of(("x",), BuildConfig(val_fraction=0.0)) == "train"


def test_the_sam2_mp4_and_its_jpeg_frames_have_the_same_fingerprint():
    data = shared_data()
    items = {item.kind: item for item in discover(str(data / "videos" / "sam2_bedroom"))}
    config = BuildConfig(frames=2, fps=8.0, size=(64, 64))
    mp4 = decode(items[InputKind.VIDEO], config).fingerprint
    frames = decode(items[InputKind.FRAME_FOLDER], config).fingerprint
    assert identity.distance(mp4, frames) <= 2
    others = [decode(item, config).fingerprint for item in discover(str(data / "videos"))
              if "sam2_bedroom" not in item.uri and item.kind.is_video]
    assert others and all(identity.distance(mp4, other) > identity.FRAME_TOLERANCE for other in others)


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_an_image_and_its_png_copy_have_the_same_fingerprint(tmp_path, small_config, mode):
    rgb = texture(60, 80, seed=4)
    image = Image.fromarray(rgb).convert(mode)
    image.save(tmp_path / "a.jpg" if mode == "RGB" else tmp_path / "a.webp", quality=70)
    image.save(tmp_path / "b.png")
    items = {item.relative.split(".")[0]: item for item in discover(str(tmp_path))}
    fingerprints = [decode(items[name], small_config).fingerprint for name in ("a", "b")]
    assert identity.same_content(*fingerprints)


def test_resuming_a_build_whose_ids_were_made_the_old_way_is_refused(tmp_path, tiny_source):
    import json

    from datagen.resume import RECORD_FILE, BuildFolder, build_record
    from manifests.errors import ConfigError

    items = discover(str(tiny_source))
    record = build_record(str(tiny_source), None, BuildConfig(), None, items)
    old = {k: v for k, v in record.items() if k not in ("identity", "versions_sha1")}
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / RECORD_FILE).write_text(json.dumps(old))
    with pytest.raises(ConfigError, match="holds a build of something else.*input ids are made another way"):
        BuildFolder(tmp_path / "ds").open(record, overwrite=False)
    changed = build_record(str(tiny_source), None, BuildConfig(), None,
                           [replace(items[0], version="mtime:0:0"), *items[1:]])
    (tmp_path / "ds" / RECORD_FILE).write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="an input changed since"):
        BuildFolder(tmp_path / "ds").open(changed, overwrite=False)
