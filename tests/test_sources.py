"""Discovery and classification of inputs."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import moving_disk, shared_data, texture, write_layered, write_rgba, write_video
from PIL import Image

from datagen.config import FrameFolders
from datagen.sources import discover, frame_order, looks_like_frames
from manifests.errors import ConfigError
from manifests.identity import input_id
from manifests.layers import InputKind, Role


def write_frames(folder, count=6, seed=0, suffix=".png", name="{:05d}"):
    """Consecutive frames of one clip (a disk moving over a texture), numbered."""
    frames, _ = moving_disk(count, 48, 64, seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / (name.format(i) + suffix))
    return folder


def write_photos(folder, count=10):
    """Unrelated photos (textures of different seeds), numbered like frames."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(texture(48, 64, seed=100 + i)).save(folder / f"{i + 1:03d}.jpg")
    return folder


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
    write_frames(clip / "frames", count=6)
    for i in range(6):
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
    write_frames(tmp_path / "clip" / "images", count=6)
    [item] = discover(str(tmp_path))
    assert (item.kind, item.name) == (InputKind.FRAME_FOLDER, "clip")


def test_a_folder_of_unrelated_numbered_photos_is_read_as_images_not_a_clip(tmp_path):
    write_photos(tmp_path / "holiday", count=10)
    items = discover(str(tmp_path))
    assert len(items) == 10 and {item.kind for item in items} == {InputKind.IMAGE}
    assert sorted(item.relative for item in items) == [f"holiday/{i:03d}.jpg" for i in range(1, 11)]


def test_numbered_images_that_look_like_consecutive_frames_are_a_clip(tmp_path):
    write_frames(tmp_path / "walk", count=8, name="{:03d}", suffix=".jpg")
    [item] = discover(str(tmp_path))
    assert (item.kind, item.relative) == (InputKind.FRAME_FOLDER, "walk")
    assert looks_like_frames(frame_order(list((tmp_path / "walk").iterdir())))
    assert not looks_like_frames(frame_order(list(write_photos(tmp_path / "photos").iterdir())))


def test_numbered_images_of_two_sizes_are_no_clip(tmp_path):
    folder = write_frames(tmp_path / "mixed", count=6)
    Image.fromarray(texture(40, 40, 1)).save(folder / "00002.png")  # one frame of another size
    assert {item.kind for item in discover(str(tmp_path))} == {InputKind.IMAGE}


def test_frame_folders_option_and_sidecar_decide_over_the_look_of_the_images(tmp_path):
    write_photos(tmp_path / "photos")
    write_frames(tmp_path / "clip", count=6)
    kinds = {mode: sorted(item.kind.value for item in discover(str(tmp_path), frame_folders=mode))
             for mode in FrameFolders}
    assert kinds[FrameFolders.AUTO] == ["frame_folder"] + ["image"] * 10
    assert kinds[FrameFolders.CLIPS] == ["frame_folder", "frame_folder"]
    assert kinds[FrameFolders.IMAGES] == ["image"] * 16
    (tmp_path / "photos" / "captions.json").write_text(json.dumps({"frame_folder": True}))
    (tmp_path / "clip.json").write_text(json.dumps({"frame_folder": False}))
    items = discover(str(tmp_path))
    assert sorted((item.relative.split("/")[0], item.kind.value) for item in items)[-1] == ("photos", "frame_folder")
    assert sum(item.relative.startswith("clip/") for item in items) == 6


def test_ids_come_from_the_path_under_the_source_and_the_size_not_the_folder(tmp_path, tiny_source):
    import shutil

    copy = shutil.copytree(tiny_source, tmp_path / "elsewhere" / "copy")
    first, second = discover(str(tiny_source)), discover(str(copy))
    assert [(i.input_id, i.relative) for i in first] == [(i.input_id, i.relative) for i in second]
    assert {i.uri for i in first}.isdisjoint({i.uri for i in second})
    video = next(i for i in first if i.relative == "fg_a.mp4")
    assert video.input_id == input_id("source", "fg_a.mp4", os.path.getsize(tiny_source / "fg_a.mp4"))
    with (copy / "fg_a.mp4").open("ab") as handle:  # other bytes: another input
        handle.write(b"\0")
    changed = {i.relative: i.input_id for i in discover(str(copy))}
    assert changed["fg_a.mp4"] != video.input_id and changed["fg_b.mp4"] == by_name(first)["fg_b.mp4"].input_id


def test_a_symlink_and_a_byte_copy_are_duplicates_of_the_first_path(tmp_path):
    write_video(tmp_path / "a.mp4", seed=1)
    os.symlink(tmp_path / "a.mp4", tmp_path / "b.mp4")
    (tmp_path / "c.mp4").write_bytes((tmp_path / "a.mp4").read_bytes())
    write_video(tmp_path / "d.mp4", seed=2)
    items = {item.relative: item for item in discover(str(tmp_path))}
    first = items["a.mp4"]
    assert first.duplicate_of is None and items["d.mp4"].duplicate_of is None
    assert items["b.mp4"].duplicate_of == first.input_id and "the same file as a.mp4" in items["b.mp4"].duplicate_reason
    assert items["c.mp4"].duplicate_of == first.input_id
    assert "byte-for-byte copy of a.mp4" in items["c.mp4"].duplicate_reason


def test_a_group_comes_from_a_sidecar_or_a_list_column(tmp_path):
    write_video(tmp_path / "a.mp4", seed=1)
    (tmp_path / "a.json").write_text(json.dumps({"group": "shoot-7"}))
    write_video(tmp_path / "b.mp4", seed=2)
    assert {i.relative: i.group for i in discover(str(tmp_path))} == {"a.mp4": "shoot-7", "b.mp4": None}
    (tmp_path / "list.csv").write_text("uri,group\nb.mp4,shoot-9\n")
    [item] = discover(str(tmp_path / "list.csv"))
    assert (item.relative, item.group) == ("b.mp4", "shoot-9")


def test_the_real_frame_folders_are_clips_and_the_real_photos_are_not():
    data = shared_data()
    for folder in [*(data / "videos").glob("*/frames"), data / "backgrounds" / "reds_demo_000" / "frames"]:
        assert looks_like_frames(frame_order(list(folder.iterdir()))), folder
    for folder in (data / "layered" / "art_semi_transparent").iterdir():
        assert not looks_like_frames(frame_order(list(folder.iterdir()))), folder


def test_a_matte_pair_in_its_folder_is_one_input_not_also_a_plain_image(tmp_path):
    folder = tmp_path / "lemur"
    folder.mkdir()
    Image.fromarray(texture(40, 40, 3)).save(folder / "lemur.png")
    Image.fromarray(np.full((40, 40), 200, np.uint8)).save(folder / "lemur_alpha.png")
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(folder / "lemur_trimap.png")  # a companion, no input
    items = discover(str(tmp_path))
    assert [(item.relative, item.adapter.value if item.adapter else None) for item in items] == \
        [("lemur/lemur.png", "matte_pair")]
    assert items[0].duplicate_of is None
