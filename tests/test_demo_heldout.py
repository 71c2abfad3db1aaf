"""The demo's HELDOUT profile: its counts, families and identities, procedural objects, and a default demo it leaves
unchanged."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datagen.demo import (
    CUTOUTS,
    HELDOUT_FRAME_COUNT,
    PAD,
    DemoManifest,
    DemoProfile,
    draw_object,
    heldout_backdrops,
    heldout_objects,
    make_demo_source,
    make_shape,
    make_texture,
)
from manifests.errors import ConfigError
from manifests.video_io import video_info

PROCEDURAL = ("blob", "polygon", "star", "ring")


@pytest.fixture(scope="module")
def heldout(tmp_path_factory: pytest.TempPathFactory) -> DemoManifest:
    return make_demo_source(tmp_path_factory.mktemp("heldout") / "out", seed=0, profile=DemoProfile.HELDOUT)


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _family(group: str) -> str:
    return group.split("/")[0]


def test_counts_and_families(heldout: DemoManifest) -> None:
    assert heldout.profile is DemoProfile.HELDOUT
    assert heldout.counts == {"foreground_videos": 32, "moving_camera_videos": 16, "background_videos": 12,
                              "layered_images": 12, "ground_truth_frames": 32 * 24}
    assert heldout.frame_count == HELDOUT_FRAME_COUNT == 24
    objects = [group for group, _ in heldout.foreground_groups]
    assert len(set(objects)) == len(objects) == 32, "every object is filmed exactly once"
    families = Counter(_family(group) for group in objects)
    assert families["picture"] == len(CUTOUTS) == 7
    assert set(families) == {"picture", *PROCEDURAL}
    assert all(families[family] >= 5 for family in PROCEDURAL)
    assert len(set(heldout.background_groups)) == 12, "the background videos film distinct backdrops"
    behind = {backdrop for _, backdrop in (*heldout.foreground_groups, *heldout.layered_groups)}
    assert {_family(group) for group in (*behind, *heldout.background_groups)} == {"photo", "texture"}
    assert video_info(heldout.foreground_videos[0])[0] == video_info(heldout.background_videos[0])[0] == 24


def test_every_sidecar_carries_its_identity(heldout: DemoManifest) -> None:
    for video, (group, backdrop) in zip(heldout.foreground_videos, heldout.foreground_groups, strict=True):
        sidecar = _json(video.with_suffix(".json"))
        assert sidecar == {"role": "foreground", "foreground": sidecar["foreground"], "group": group,
                           "background_group": backdrop}
        assert video.name.endswith(f"_{group.split('/')[1]}.mp4") and len(sidecar["foreground"]) > 10
    for video, group in zip(heldout.background_videos, heldout.background_groups, strict=True):
        sidecar = _json(video.with_suffix(".json"))
        assert sidecar == {"role": "background", "background": sidecar["background"], "group": group}
        assert len(sidecar["background"]) > 10
    for folder, (group, backdrop) in zip(heldout.layered_images, heldout.layered_groups, strict=True):
        captions = _json(folder / "captions.json")
        assert (captions["group"], captions["background_group"]) == (group, backdrop)
        assert captions["blended"] == f"{captions['foreground']} in front of {captions['background']}"


def test_layered_images_reuse_filmed_objects_under_the_same_group(heldout: DemoManifest) -> None:
    filmed = {group: video for video, (group, _) in zip(heldout.foreground_videos, heldout.foreground_groups,
                                                        strict=True)}
    for folder, (group, _) in zip(heldout.layered_images, heldout.layered_groups, strict=True):
        video = filmed[group]
        assert folder.name != video.stem and folder.name.startswith("li_")
        assert _json(folder / "captions.json")["foreground"] == _json(video.with_suffix(".json"))["foreground"]


def test_ground_truth_is_a_soft_cut_out_that_uncovers_the_background(heldout: DemoManifest) -> None:
    for truth, camera in zip(heldout.ground_truth, heldout.cameras, strict=True):
        alpha = np.stack([np.asarray(Image.open(path)) for path in sorted(truth.glob("[0-9]*.png"))]) / 255.0
        assert alpha.shape == (24, 240, 320)
        coverage = alpha.mean(axis=(1, 2))
        assert 0.01 < coverage.min() <= coverage.max() < 0.4, truth.name
        assert ((alpha > 0) & (alpha < 1)).sum() > 20 * 24, f"{truth.name}: edges are not anti-aliased"
        border = np.concatenate([alpha[:, 0], alpha[:, -1], alpha[:, :, 0], alpha[:, :, -1]], axis=1)
        assert border.max() == 0, f"{truth.name}: the object touches the frame border"
        # A temporal-median background needs every pixel uncovered for most of the clip.
        assert (alpha > 0).mean(axis=0).max() <= 0.45, f"{truth.name}: the object does not move far enough"
        assert (truth / ("background" if camera == "moving" else "background.png")).exists(), truth.name


def test_procedural_objects_are_deterministic_and_seeded() -> None:
    shape = make_shape("star", 2, seed=0)
    again = make_shape("star", 2, seed=0)
    assert shape == again and shape.group == "star/star_02"
    first, second = draw_object(shape, 120), draw_object(again, 120)
    assert np.array_equal(first.rgb, second.rgb) and np.array_equal(first.alpha, second.alpha)
    assert make_shape("star", 2, seed=1) != shape
    assert heldout_objects(0) == heldout_objects(0) != heldout_objects(1)
    assert heldout_backdrops(0) == heldout_backdrops(0)
    assert make_texture(0, seed=0) != make_texture(0, seed=1)


def test_procedural_objects_are_anti_aliased_captioned_and_sized_alike() -> None:
    shapes = [thing for thing in heldout_objects(0) if thing.family in PROCEDURAL]
    for shape in shapes:
        sprite = draw_object(shape, 100)
        assert max(sprite.alpha.shape) == 100 + 2 * PAD
        assert sprite.alpha[:PAD].max() == sprite.alpha[-PAD:].max() == 0, shape.name
        assert ((sprite.alpha > 0) & (sprite.alpha < 1)).sum() > 30, f"{shape.name}: hard edges"
        assert shape.caption.startswith(("a ", "an ")) and all(c in shape.caption for c in shape.fill.colours)
        assert 80 <= shape.video_size <= 100 and shape.image_size == CUTOUTS["cat"].image_size
    ring = next(shape for shape in shapes if shape.family == "ring")
    alpha = draw_object(ring, 100).alpha
    assert alpha[alpha.shape[0] // 2, alpha.shape[1] // 2] == 0, "a ring has a hole"


def test_an_unknown_profile_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="profile"):
        make_demo_source(tmp_path / "out", profile="everything")  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()


def test_the_default_profile_is_unchanged(tmp_path: Path) -> None:
    """These sha256 pin the default demo (seed 0) as written before the HELDOUT profile existed: the default profile
    must stay byte-identical (its tests and `bench/` rely on it)."""
    default = make_demo_source(tmp_path / "default", seed=0)
    assert default.profile is DemoProfile.DEFAULT and default.frame_count == 48
    assert default.counts == {"foreground_videos": 6, "moving_camera_videos": 3, "background_videos": 4,
                              "layered_images": 6, "ground_truth_frames": 6 * 48}
    # JSON sidecars by their bytes; PNGs by their decoded pixels (the bytes would pin this machine's zlib and Pillow)
    pinned = {
        "foreground/fg_00_astronaut_face.json": "ffc808cea1dc5cb83df606f7e01ddac8999119f35cf67fb121aaf6f22b527452",
        "backgrounds/bg_00_galaxies.json": "9b2772641d65dd57dd05fe19a929731334ee62515251fdde4d6d4347c672e52d",
        "layered/li_00_cat/captions.json": "e506fa81009f324b607b28e372ec9bd5e39db604afb0b6307351c0afd1430475",
        "layered/li_00_cat/foreground.png": "dbea4780f3543c90a5fa56e2b47df48ffbe651f4f7a1a4ea605512cf7c0b4223",
        "ground_truth/fg_01_cat/00000.png": "c3ec81968c324a2af4800cf662bd4d5033cc87863e0227772b6719b26c8797b6",
        "ground_truth/fg_05_coins/00047.png": "9c0141ccba8bea5a415febe8e807138903f7c78aa3d7e8f8d62c46276a251dd6",
        "ground_truth/fg_00_astronaut_face/background/00047.png":
            "e5689a11008c40412234c51945d6cb50aafd71a07b8607624f1f53227f573705",
    }

    def digest(name: str) -> str:
        path = default.root / name
        data = np.asarray(Image.open(path)).tobytes() if path.suffix == ".png" else path.read_bytes()
        return hashlib.sha256(data).hexdigest()

    assert {name: digest(name) for name in pinned} == pinned
