"""Discovery and classification of inputs."""

from __future__ import annotations

import csv
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import texture, write_layered, write_rgba, write_video
from PIL import Image

from datagen.sources import discover
from manifests.errors import ConfigError
from manifests.layers import InputKind, Role


def by_name(items):
    return {os.path.basename(item.uri.rstrip("/")): item for item in items}


def test_directory_is_walked_and_each_input_classified(tiny_source):
    items = by_name(discover(str(tiny_source)))
    assert items["fg_a.mp4"].kind == InputKind.VIDEO
    assert items["one"].kind == InputKind.LAYERED_IMAGE
    assert items["star.png"].kind == InputKind.IMAGE  # RGBA is known after decoding
    assert items["paper.jpg"].kind == InputKind.IMAGE
    assert "fg_a.json" not in items and "fg_b.txt" not in items  # sidecars are captions, not inputs
    assert len(items) == 6


def test_sidecars_give_captions_and_role(tiny_source):
    items = by_name(discover(str(tiny_source)))
    assert items["fg_a.mp4"].caption_foreground == "a red disk"
    assert items["fg_b.mp4"].caption == "a spotted ball"
    assert items["bg_c.mp4"].role == Role.BACKGROUND
    assert items["bg_c.mp4"].caption_background == "a wall"
    assert items["one"].caption_blended == "a coin on grass"


def test_frame_folder_with_davis_masks_beside_it(tmp_path):
    clip = tmp_path / "dance"
    for i in range(3):
        write_rgba(clip / "frames" / f"{i:05d}.png", seed=i)
        write_rgba(clip / "masks" / f"{i:05d}.png", seed=i)
    (clip / "captions.json").write_text(json.dumps({"foreground": "a dancer"}))
    [item] = discover(str(tmp_path))
    assert item.kind == InputKind.FRAME_FOLDER
    assert item.mask_dir == str((clip / "masks").absolute())
    assert item.name == "dance"
    assert item.caption_foreground == "a dancer"


def test_ground_truth_folders_are_not_inputs(tmp_path):
    write_video(tmp_path / "v.mp4")
    for i in range(3):
        write_rgba(tmp_path / "ground_truth" / "v" / f"{i:05d}.png")
    assert [os.path.basename(i.uri) for i in discover(str(tmp_path))] == ["v.mp4"]


def test_unknown_files_and_symlink_loops_become_failed_inputs(tmp_path):
    write_video(tmp_path / "v.mp4")
    (tmp_path / "noise.bin").write_bytes(os.urandom(64))
    os.symlink(tmp_path, tmp_path / "loop")
    os.symlink(tmp_path / "self_a", tmp_path / "self_b")
    os.symlink(tmp_path / "self_b", tmp_path / "self_a")
    items = by_name(discover(str(tmp_path)))
    assert items["v.mp4"].error is None
    assert "not a video, image, layered document or frame folder" in items["noise.bin"].error
    assert "symlink loop" in items["loop"].error
    assert "symlink loop" in items["self_a"].error
    assert all(item.kind == InputKind.UNSUPPORTED for name, item in items.items() if name != "v.mp4")


def test_glob_source(tiny_source):
    items = discover(str(tiny_source / "*.mp4"))
    assert sorted(os.path.basename(i.uri) for i in items) == ["fg_a.mp4", "fg_b.mp4"]


def test_list_files_txt_csv_parquet_with_caption_columns(tiny_source, tmp_path):
    (tmp_path / "list.txt").write_text(f"# comment\n{tiny_source / 'fg_a.mp4'}\nsrc/fg_b.mp4\n")
    txt = discover(str(tmp_path / "list.txt"))
    assert [os.path.basename(i.uri) for i in txt] == ["fg_a.mp4", "fg_b.mp4"]

    with (tmp_path / "list.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["uri", "caption_foreground", "role"])
        writer.writerow(["src/fg_b.mp4", "a blue ball", "foreground"])
        writer.writerow(["src/missing.mp4", "", ""])
    items = by_name(discover(str(tmp_path / "list.csv")))
    assert items["fg_b.mp4"].caption_foreground == "a blue ball"
    assert items["fg_b.mp4"].role == Role.FOREGROUND
    assert items["missing.mp4"].error == "file not found"

    pq.write_table(pa.table({"uri": ["src/layered/one"], "caption_blended": ["x"]}), tmp_path / "list.parquet")
    [layered] = discover(str(tmp_path / "list.parquet"))
    assert layered.kind == InputKind.LAYERED_IMAGE and layered.caption_blended == "x"


def test_list_file_without_uri_column_is_a_config_error(tmp_path):
    (tmp_path / "bad.csv").write_text("path\nx.mp4\n")
    with pytest.raises(ConfigError, match="uri"):
        discover(str(tmp_path / "bad.csv"))


def test_missing_source_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        discover(str(tmp_path / "nope"))


def test_ids_are_deterministic(tiny_source):
    assert [i.input_id for i in discover(str(tiny_source))] == [i.input_id for i in discover(str(tiny_source))]


def test_unicode_and_spaces_in_names(tmp_path):
    write_video(tmp_path / "vidéo clip 1.mp4")
    write_layered(tmp_path / "ça va")
    kinds = {os.path.basename(i.uri): i.kind for i in discover(str(tmp_path))}
    assert kinds == {"vidéo clip 1.mp4": InputKind.VIDEO, "ça va": InputKind.LAYERED_IMAGE}


def test_fg_and_bg_folders_whose_names_do_not_match_are_ordinary_folders(tmp_path):
    write_rgba(tmp_path / "fg" / "star.png", seed=1)
    (tmp_path / "bg").mkdir()
    Image.fromarray(texture(40, 40, 2)).save(tmp_path / "bg" / "paper.png")
    items = by_name(discover(str(tmp_path)))
    assert {name: (item.kind, item.adapter) for name, item in items.items()} == {
        "star.png": (InputKind.IMAGE, None), "paper.png": (InputKind.IMAGE, None)}


def test_an_image_named_like_a_matte_without_its_image_is_an_ordinary_image(tmp_path):
    write_rgba(tmp_path / "y_mask.png", seed=1)
    [item] = discover(str(tmp_path))
    assert (item.kind, item.adapter, item.error) == (InputKind.IMAGE, None, None)


def test_a_frame_folder_named_images_stays_a_clip_without_an_alpha_folder_beside_it(tmp_path):
    for i in range(3):
        write_rgba(tmp_path / "clip" / "images" / f"{i:05d}.png", seed=i)
    [item] = discover(str(tmp_path))
    assert (item.kind, item.name) == (InputKind.FRAME_FOLDER, "clip")
