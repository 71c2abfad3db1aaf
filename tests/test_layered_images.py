"""Layered images in the layouts users keep them in: each adapter on tiny files written here, a PSD made with psd-tools,
the multi-layer manifest contract, and the real layered data (LAYERFLOW_TEST_DATA, skipped when unset)."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data, texture
from PIL import Image

from datagen.build import build
from datagen.composite import blend
from datagen.config import BuildConfig
from datagen.decode import decode
from datagen.layered import MattePair, PsdDocument, estimate_foreground, read_matte
from datagen.pipeline import LocalRunner
from datagen.sources import discover
from filters.audit import validate_dataset
from filters.report import write_report
from manifests import io
from manifests.errors import InputError
from manifests.inspect import inspect_dataset
from manifests.layers import Adapter, InputKind, Layer, composite_over, flatten
from manifests.metrics import psnr
from manifests.schema import foreground_layers
from manifests.video_io import quantise, read_layer

H, W = 48, 64
# No val share: these tests are about the layouts, not about which input a held-out draw leaves without a background.
SMALL = BuildConfig(frames=2, fps=8.0, size=(32, 48), matting="given", captioner="sidecar", clip="none",
                    val_fraction=0.0)


def disk(cx: float, cy: float, radius: float, height: int = H, width: int = W) -> np.ndarray:
    """A soft-edged disk as float alpha (H, W)."""
    yy, xx = np.mgrid[:height, :width]
    return np.clip(radius - np.hypot(xx - cx, yy - cy) + 0.5, 0.0, 1.0).astype(np.float32)


def save_rgba(path: Path, colour: np.ndarray, alpha: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.dstack([colour, quantise(alpha)]), "RGBA").save(path)
    return path


def save_rgb(path: Path, colour: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(colour).save(path)
    return path


LAYER_DISKS = [(16, 16, 10), (30, 24, 12), (44, 30, 9)]  # bottom to top, overlapping


def write_multilayer(folder: Path, whole: bool = True, background: bool = True) -> Path:
    """bg.png + layer_0..2.png (+ whole.png, the exact composite), like ART's natural_image_data."""
    bg = texture(H, W, 1)
    if background:
        save_rgb(folder / "bg.png", bg)
    colours = [texture(H, W, 10 + k) for k in range(len(LAYER_DISKS))]
    alphas = [quantise(disk(*d)) for d in LAYER_DISKS]
    for k, (colour, alpha) in enumerate(zip(colours, alphas)):
        save_rgba(folder / f"layer_{k}.png", colour, alpha.astype(np.float32) / 255.0)
    if whole:
        save_rgb(folder / "whole.png", np.rint(composite_over(bg, colours, alphas)).astype(np.uint8))
    return folder


def write_triplet(root: Path, name: str, seed: int) -> None:
    """fg/<name>.png (RGBA), bg/<name>.png and merged/<name>.png = fg over bg, like ART's semi-transparent data."""
    colour, alpha, bg = texture(H, W, seed), disk(32, 24, 14) * 0.8, texture(H, W, seed + 1)
    save_rgba(root / "fg" / f"{name}.png", colour, alpha)
    save_rgb(root / "bg" / f"{name}.png", bg)
    save_rgb(root / "merged" / f"{name}.png", blend(colour[None], alpha[None], bg[None]).blended[0])


def write_matte_pair(folder: Path, name: str = "x", size: tuple[int, int] = (H, W)) -> tuple[np.ndarray, ...]:
    """x.png = alpha * F + (1 - alpha) * B (flat colours), beside x_alpha.png; returns (F, B, alpha)."""
    foreground = np.zeros((H, W, 3), np.uint8) + np.array([220, 40, 40], np.uint8)
    background = np.zeros((H, W, 3), np.uint8) + np.array([30, 160, 220], np.uint8)
    yy, xx = np.mgrid[:H, :W]
    alpha = np.clip((22 - np.hypot(xx - 32, yy - 24)) / 10, 0, 1)  # opaque core, a 10-pixel soft edge all round
    image = blend(foreground[None], alpha[None], background[None]).blended[0]
    save_rgb(folder / f"{name}.png", image)
    Image.fromarray(quantise(alpha)).resize(size[::-1]).save(folder / f"{name}_alpha.png")
    return foreground, background, quantise(alpha).astype(np.float32) / 255.0


def write_psd(path: Path, blend_mode: str = "NORMAL") -> Path:
    """A document made with psd-tools: an opaque paper, a sun at opacity 160, and a group `birds` (opacity 200) of two
    layers, the top one with a layer mask that hides its right part."""
    from psd_tools import PSDImage
    from psd_tools.constants import BlendMode

    psd = PSDImage.new("RGBA", (W, H))
    psd.create_pixel_layer(Image.fromarray(texture(H, W, 1)), name="paper")
    sun = np.dstack([texture(H, W, 2), quantise(disk(20, 20, 12))])
    psd.create_pixel_layer(Image.fromarray(sun, "RGBA"), name="sun", opacity=160,
                           blend_mode=BlendMode[blend_mode])
    group = psd.create_group(name="birds", opacity=200)
    group.create_pixel_layer(Image.fromarray(np.dstack([texture(H, W, 3), quantise(disk(40, 30, 10))]), "RGBA"),
                             name="bird a")
    bird = group.create_pixel_layer(Image.fromarray(np.dstack([texture(H, W, 4), quantise(disk(48, 26, 9))]), "RGBA"),
                                    name="bird b")
    mask = np.zeros((H, W), np.uint8)
    mask[:, :50] = 255
    bird.create_mask(Image.fromarray(mask))
    path.parent.mkdir(parents=True, exist_ok=True)
    psd.save(path)
    return path


def only(items):
    [item] = items
    return item


# The flattening rule ----------------------------------------------------------------------------------------------

def test_flatten_is_straight_alpha_over_compositing():
    rng = np.random.default_rng(0)
    colours = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(3)]
    alphas = [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(3)]
    colour, alpha = flatten(colours, alphas)
    a = [x.astype(np.float64) / 255 for x in alphas]
    assert np.array_equal(alpha, quantise(1 - (1 - a[0]) * (1 - a[1]) * (1 - a[2])))
    background = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    layered = composite_over(background, colours, alphas)
    flattened = blend(colour[None], alpha[None], background[None]).blended[0]
    # half a grey level each from the 8-bit flattened alpha, the 8-bit flattened colour and the blended frame's own
    assert np.abs(layered - flattened).max() <= 1.5


def test_flatten_of_one_layer_is_that_layer():
    colour = texture(8, 8, 1)
    alpha = np.full((8, 8), 128, np.uint8)
    flat_colour, flat_alpha = flatten([colour], [alpha])
    assert np.array_equal(flat_alpha, alpha) and np.abs(flat_colour.astype(int) - colour).max() <= 1


# Discovery: each layout recognised as such -------------------------------------------------------------------------

def test_multilayer_folder_is_one_input_with_its_layers(tmp_path):
    folder = write_multilayer(tmp_path / "scene")
    item = only(discover(str(tmp_path)))
    assert (item.kind, item.adapter) == (InputKind.LAYERED_IMAGE, Adapter.MULTILAYER_FOLDER)
    assert sorted(item.files) == ["background", "composite", "layer_0", "layer_1", "layer_2"]
    assert item.companions == (str(folder / "whole.png"),)
    decoded = decode(item, BuildConfig(frames=2, size=(H, W)))
    assert len(decoded.layers) == 3 and decoded.kind is InputKind.LAYERED_IMAGE
    assert [Path(s).name for s in decoded.layer_sources] == ["layer_0.png", "layer_1.png", "layer_2.png"]
    assert decoded.composite_psnr >= 60.0  # whole.png is the exact composite


def test_layer_folder_without_background_is_a_failed_input(tmp_path):
    write_multilayer(tmp_path / "scene", background=False)
    item = only(discover(str(tmp_path)))
    assert item.kind is InputKind.UNSUPPORTED
    assert item.error == "layer folder without a background: layer_0.png, layer_1.png, layer_2.png but no bg.* " \
                         "(or background.*)"


def test_sibling_folders_give_one_triplet_per_matching_name(tmp_path):
    for name, seed in (("a", 1), ("b", 3)):
        write_triplet(tmp_path, name, seed)
    save_rgb(tmp_path / "bg" / "lonely.png", texture(H, W, 9))
    (tmp_path / "fg" / "a.txt").write_text("a glass ball")  # a sidecar caption, not an input
    items = {Path(i.uri).relative_to(tmp_path).as_posix(): i for i in discover(str(tmp_path))}
    assert sorted(items) == ["bg/lonely.png", "fg/a.png", "fg/b.png"]
    triplet = items["fg/a.png"]
    assert (triplet.kind, triplet.adapter) == (InputKind.LAYERED_IMAGE, Adapter.SIBLING_FOLDERS)
    assert triplet.background_source == str(tmp_path / "bg" / "a.png")
    assert triplet.companions == (str(tmp_path / "merged" / "a.png"),) and triplet.caption == "a glass ball"
    assert "'lonely' is not in both fg/ and bg/ (found bg/lonely.png)" in items["bg/lonely.png"].error
    assert decode(triplet, BuildConfig(frames=2, size=(H, W))).composite_psnr >= 50.0


def test_matte_pair_takes_its_trimap_and_cutout_as_companions(tmp_path):
    write_matte_pair(tmp_path)
    save_rgb(tmp_path / "x_trimap.png", np.zeros((H, W, 3), np.uint8))
    save_rgba(tmp_path / "x_cutout.png", np.zeros((H, W, 3), np.uint8), np.zeros((H, W)))
    item = only(discover(str(tmp_path)))
    assert item.adapter is Adapter.MATTE_PAIR and Path(item.uri).name == "x.png"
    assert item.files == {"alpha": str(tmp_path / "x_alpha.png")}
    assert sorted(Path(c).name for c in item.companions) == ["x_cutout.png", "x_trimap.png"]
    assert MattePair.beside(tmp_path / "x.png").companions == item.companions  # the image given on its own


def test_images_and_alpha_folders_match_by_name(tmp_path):
    for name in ("a", "b"):
        save_rgb(tmp_path / "images" / f"{name}.jpg", texture(H, W, 1))
    (tmp_path / "alpha").mkdir()
    Image.fromarray(quantise(disk(32, 24, 14))).save(tmp_path / "alpha" / "a.png")
    items = {Path(i.uri).name: i for i in discover(str(tmp_path))}
    assert items["a.jpg"].adapter is Adapter.MATTE_PAIR and items["a.jpg"].files["alpha"].endswith("alpha/a.png")
    assert items["b.jpg"].error == "no matte alpha/b.* for images/b.jpg"
    assert len(items) == 2


def test_psd_is_a_layered_document(tmp_path):
    item = only(discover(str(write_psd(tmp_path / "doc.psd").parent)))
    assert (item.kind, item.adapter) == (InputKind.LAYERED_IMAGE, Adapter.PSD)


# Reading: mattes, estimated colour, PSD documents -----------------------------------------------------------------

@pytest.mark.parametrize("form", ["grey8", "grey16", "rgb", "rgba"])
def test_a_matte_may_be_8_or_16_bit_grey_rgb_or_the_alpha_of_rgba(tmp_path, form):
    alpha = disk(32, 24, 14)
    path = tmp_path / "m.png"
    if form == "grey8":
        Image.fromarray(quantise(alpha)).save(path)
    elif form == "grey16":
        Image.fromarray(np.rint(alpha * 65535).astype(np.uint16)).save(path)
    elif form == "rgb":
        Image.fromarray(np.repeat(quantise(alpha)[..., None], 3, axis=-1)).save(path)
    else:
        save_rgba(path, texture(H, W, 5), alpha)
    assert np.abs(read_matte(path, 10**8) - alpha).max() <= 0.5 / 255 + 1e-6


def test_a_colour_image_is_no_matte(tmp_path):
    path = save_rgb(tmp_path / "m.png", texture(H, W, 5))
    with pytest.raises(InputError, match="m.png is a colour image"):
        read_matte(path, 10**8)


def test_a_matte_of_another_size_is_an_input_error(tmp_path):
    write_matte_pair(tmp_path, size=(H // 2, W // 2))
    with pytest.raises(InputError, match=r"matte x_alpha.png is 32x24, the image 64x48: they must be the same size"):
        decode(only(discover(str(tmp_path))), SMALL)


def test_matte_pair_colour_is_estimated_not_the_raw_image(tmp_path):
    foreground, _, alpha = write_matte_pair(tmp_path)
    decoded = decode(only(discover(str(tmp_path))), BuildConfig(frames=2, size=(H, W)))
    assert decoded.kind is InputKind.RGBA_IMAGE
    soft = (alpha > 0.1) & (alpha < 0.9)
    raw = np.asarray(Image.open(tmp_path / "x.png")).astype(float)
    estimated = decoded.clip.frames[0].astype(float)
    assert np.abs(raw[soft] - foreground[soft]).mean() > 40  # the raw image is mixed with the background there
    assert np.abs(estimated[soft] - foreground[soft]).mean() < 10


def test_psd_layers_recompose_to_the_psd_tools_composite_within_one_grey_level(tmp_path):
    """Before any lossy encode: the layers as the build stores them (8-bit colour and alpha), painted over the
    background, and the flattened blended frame, against `PSDImage.composite()` as psd-tools renders it."""
    from psd_tools import PSDImage

    path = write_psd(tmp_path / "doc.psd")
    decoded = decode(only(discover(str(tmp_path))), BuildConfig(frames=2, size=(H, W)))  # native size: no resampling
    reference = np.asarray(PSDImage.open(path).composite().convert("RGB")).astype(int)
    colours = [layer.frames[0] for layer in decoded.layers]
    alphas = [quantise(layer.alpha[0]) for layer in decoded.layers]
    background = decoded.background.frames[0]
    layered = np.rint(composite_over(background, colours, alphas)).astype(int)
    assert np.abs(layered - reference).max() <= 1
    flat_colour, flat_alpha = flatten(colours, alphas)
    flattened = blend(flat_colour[None], flat_alpha[None], background[None]).blended[0].astype(int)
    assert np.abs(flattened - reference).max() <= 1


def test_psd_groups_masks_and_opacity_become_layers(tmp_path):
    path = write_psd(tmp_path / "doc.psd")
    stack = PsdDocument.read(str(path), {}, 10**8)
    assert [layer.source.rpartition("#")[2] for layer in stack.layers] == ["sun", "birds"]  # paper: the background
    sun, birds = stack.layers
    assert abs(sun.alpha.max() - 160 / 255) < 0.01  # the layer opacity
    assert abs(birds.alpha.max() - 200 / 255) < 0.01  # the group opacity
    assert abs(birds.alpha[26, 46] - 200 / 255) < 0.01  # bird b, left of its mask's edge
    assert birds.alpha[26, 52] == 0.0  # bird b too, but behind its mask (and bird a does not reach there)


def test_psd_with_another_blend_mode_is_refused_with_the_reason(tmp_path):
    write_psd(tmp_path / "doc.psd", blend_mode="MULTIPLY")
    with pytest.raises(InputError, match="layer 'sun' blends with multiply; supported: normal"):
        decode(only(discover(str(tmp_path))), SMALL)


# A build: the manifest contract, accounting, validate, inspect, report -------------------------------------------

@pytest.fixture(scope="module")
def layered_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("layered")
    src = root / "src"
    write_multilayer(src / "scene")
    (src / "scene" / "captions.json").write_text(json.dumps({"layers": ["a red ball", "a kite", None],
                                                             "background": "a park"}))
    write_triplet(src / "triplets", "glass", 5)
    write_matte_pair(src / "pair")
    write_psd(src / "doc.psd")
    write_multilayer(src / "broken" / "no_bg", background=False)
    write_matte_pair(src / "broken" / "small", size=(H // 2, W // 2))
    write_psd(src / "broken" / "multiply.psd", blend_mode="MULTIPLY")
    save_rgb(root / "plates" / "plate.png", texture(H, W, 42))
    out = root / "ds"
    summary = build(str(src), out, SMALL, LocalRunner(progress=False), backgrounds=str(root / "plates"))
    rows = {Path(r["source_foreground"]).relative_to(src).as_posix(): r for r in io.read_manifest(out).to_pylist()}
    return src, out, summary, rows


def test_each_layout_gives_samples_of_its_adapter(layered_build):
    _, _, _, rows = layered_build
    assert {name: row["adapter"] for name, row in rows.items()} == {
        "scene": "multilayer_folder", "triplets/fg/glass.png": "sibling_folders", "pair/x.png": "matte_pair",
        "doc.psd": "psd"}


def test_layered_inputs_keep_their_own_background_despite_a_background_pool(layered_build):
    src, _, _, rows = layered_build
    for name in ("scene", "triplets/fg/glass.png", "doc.psd"):
        row = rows[name]
        assert row["input_id_background"] == row["input_id_foreground"]
        assert row["source_composite_psnr"] is not None and row["source_composite_psnr"] > 45
    assert rows["scene"]["source_background"] == str(src / "scene")
    assert rows["triplets/fg/glass.png"]["source_background"] == str(src / "triplets" / "bg" / "glass.png")
    assert Path(rows["pair/x.png"]["source_background"]).name == "plate.png"  # pasted onto the pool
    assert rows["pair/x.png"]["source_composite_psnr"] is None


def test_a_multilayer_sample_carries_its_layers_bottom_to_top(layered_build):
    _, out, _, rows = layered_build
    row = rows["scene"]
    assert [Path(uri).name for uri in row["layers_uri_foreground"]] == [f"{k}_foreground.mp4" for k in range(3)]
    assert [Path(uri).name for uri in row["layers_uri_alpha"]] == [f"{k}_alpha.mkv" for k in range(3)]
    assert row["layers_caption"] == ["a red ball", "a kite", None]
    assert row["caption_foreground"] == "a red ball, a kite"  # the flattened layer, from its layers' captions
    assert [Path(s).name for s in row["layers_source"]] == ["layer_0.png", "layer_1.png", "layer_2.png"]
    assert all((out / uri).is_file() for uri in row["layers_uri_foreground"] + row["layers_uri_alpha"])


def test_the_stored_layers_flatten_to_the_stored_alpha_and_recompose_the_blend(layered_build):
    _, out, _, rows = layered_build
    row = rows["doc.psd"]
    layers = io.read_layers(out, row["sample_id"])
    colours = [read_layer(out / uri, Layer.FOREGROUND) for uri, _, _ in foreground_layers(row)]
    alphas = [read_layer(out / uri, Layer.ALPHA) for _, uri, _ in foreground_layers(row)]
    assert len(colours) == 2
    assert np.abs(flatten(colours, alphas)[1].astype(int) - layers[Layer.ALPHA]).max() <= 1
    assert psnr(layers[Layer.BLENDED], composite_over(layers[Layer.BACKGROUND], colours, alphas)) > 35


def test_a_one_layer_sample_lists_its_own_foreground(layered_build):
    _, _, _, rows = layered_build
    row = rows["pair/x.png"]
    assert row["layers_uri_foreground"] == [row["uri_foreground"]]
    assert row["layers_uri_alpha"] == [row["uri_alpha"]]
    assert row["layers_caption"] == [row["caption_foreground"]]
    assert row["source_companions"] == [] and row["layers_source"] == [row["source_foreground"]]


def test_bad_layered_inputs_end_as_one_failure_line_each(layered_build):
    src, out, summary, _ = layered_build
    failures = {Path(f["uri"]).relative_to(src).as_posix(): f for f in io.read_failures(out).to_pylist()}
    assert {name: (f["stage"], f["message"]) for name, f in failures.items()} == {
        "broken/no_bg": ("discover", "layer folder without a background: layer_0.png, layer_1.png, layer_2.png but "
                                     "no bg.* (or background.*)"),
        "broken/small/x.png": ("decode", "matte x_alpha.png is 32x24, the image 64x48: they must be the same size"),
        "broken/multiply.psd": ("decode", "layer 'sun' blends with multiply; supported: normal (groups: normal or "
                                          "pass-through)"),
    }
    assert summary["inputs"]["discovered"] == summary["inputs"]["accounted"] == 8


def test_validate_checks_the_layers(layered_build, tmp_path):
    _, out, _, rows = layered_build
    assert validate_dataset(out).ok
    damaged = tmp_path / "ds"
    shutil.copytree(out, damaged)
    row = rows["scene"]
    alphas = row["layers_uri_alpha"]
    shutil.copyfile(damaged / alphas[0], damaged / alphas[2])  # the top layer's alpha replaced by the bottom one's
    problems = validate_dataset(damaged).problems
    assert any(f"sample {row['sample_id']}: its 3 layers flatten to an alpha up to" in p for p in problems)


def test_validate_checks_the_layers_colour(layered_build, tmp_path):
    _, out, _, rows = layered_build
    damaged = tmp_path / "ds"
    shutil.copytree(out, damaged)
    row = rows["scene"]
    colours = row["layers_uri_foreground"]
    shutil.copyfile(damaged / colours[2], damaged / colours[0])  # the bottom layer painted with the top one's colour
    problems = validate_dataset(damaged).problems
    assert any(f"sample {row['sample_id']}: its 3 layers recompose the blended layer at" in p for p in problems)


def test_inspect_and_report_count_samples_per_adapter(layered_build):
    _, out, _, rows = layered_build
    info = inspect_dataset(out, examples=10)
    assert info["by_adapter"] == {"multilayer_folder": 1, "sibling_folders": 1, "matte_pair": 1, "psd": 1}
    assert {e["adapter"] for e in info["examples"]} == set(info["by_adapter"])
    page = write_report(out).read_text(encoding="utf-8")
    assert "by adapter</th><td>" in page and "multilayer_folder 1" in page
    assert page.count('class="tag adapter"') == len(rows)


# The real layered data ---------------------------------------------------------------------------------------------

def layered_data() -> Path:
    return shared_data() / "layered"


def test_real_layered_folders_are_read_in_their_own_layouts():
    items = discover(str(layered_data()))
    adapters = Counter(item.adapter.value for item in items if item.adapter and item.error is None)
    assert adapters == {"multilayer_folder": 4, "sibling_folders": 8, "matte_pair": 1, "psd": 17}
    names = {Path(item.uri).name for item in items}
    assert not names & {"lemur_alpha.png", "lemur_trimap.png", "lemur_cutout.png", "whole.png", "bg.png"}
    lemur = next(item for item in items if item.adapter is Adapter.MATTE_PAIR)
    assert sorted(Path(c).name for c in lemur.companions) == ["lemur_cutout.png", "lemur_trimap.png"]


def test_real_art_layers_recompose_their_own_composites():
    items = [i for i in discover(str(layered_data())) if i.adapter in (Adapter.MULTILAYER_FOLDER,
                                                                           Adapter.SIBLING_FOLDERS)]
    config = BuildConfig(frames=2, size=(64, 64))
    figures = {Path(item.uri).name: decode(item, config) for item in items}
    assert all(len(d.layers) == 4 for name, d in figures.items() if name.startswith("case_") and "output" not in name)
    # measured: art_multilayer 84-100 dB against whole.png, art_semi_transparent 100 dB (identical) against merged/
    assert min(d.composite_psnr for d in figures.values()) >= 35.0


def test_real_lemur_colour_matches_pymatting_own_cutout():
    folder = layered_data() / "pymatting_lemur"
    stack = MattePair.read(str(folder / "lemur.png"), {"alpha": str(folder / "lemur_alpha.png")}, 10**8)
    [layer] = stack.layers
    estimated = estimate_foreground(layer.colour, layer.alpha).astype(float)
    cutout = np.asarray(Image.open(folder / "lemur_cutout.png"))[..., :3].astype(float)
    soft = (layer.alpha > 0.05) & (layer.alpha < 0.95)
    # measured: 0.71 grey levels from the cut-out's colour in the soft edge; the raw photo is 43 levels away there
    assert np.abs(estimated[soft] - cutout[soft]).mean() < 2.0
    assert np.abs(layer.colour[soft] - cutout[soft]).mean() > 20.0


@pytest.mark.parametrize(("name", "message"), [
    ("blend-modes_multiply.psd", "layer 'Ellipse 1' blends with multiply"),
    ("layer-name-emoji.psd", "blends with linear dodge"),
    ("passthrough_opacity.psd", "layer 'Exposure 1' is an adjustment layer"),
    ("layers_group.psd", "no visible layer with pixels"),
])
def test_real_psd_with_unsupported_features_is_refused_with_the_reason(name, message):
    item = only(discover(str(layered_data() / "psd_tools_fixtures" / name)))
    with pytest.raises(InputError, match=message):
        decode(item, SMALL)


@pytest.mark.parametrize("name", ["2layers.psd", "2layers.psb", "clipping-mask3.psd", "hidden-layer.psd"])
def test_real_psd_layers_recompose_to_the_psd_tools_render(name):
    from psd_tools import PSDImage

    path = layered_data() / "psd_tools_fixtures" / name
    stack = PsdDocument.read(str(path), {}, 10**8)
    reference = np.asarray(PSDImage.open(path).composite(ignore_preview=True).convert("RGB")).astype(int)
    alphas = [quantise(layer.alpha) for layer in stack.layers]
    layered = composite_over(stack.background, [layer.colour for layer in stack.layers], alphas)
    assert np.abs(np.rint(layered).astype(int) - reference).max() <= 1


def test_real_layered_build_reads_every_layout(tmp_path):
    data = layered_data()
    out = tmp_path / "ds"
    summary = build(str(data), out, BuildConfig(frames=2, fps=8.0, size=(32, 32), matting="given",
                                                captioner="sidecar", clip="none", val_fraction=0.0),
                    LocalRunner(progress=False))
    rows = io.read_manifest(out).to_pylist()
    adapters = Counter(row["adapter"] for row in rows)
    assert adapters["multilayer_folder"] == 4 and adapters["sibling_folders"] == 8
    assert adapters["matte_pair"] >= 1 and adapters["psd"] >= 5
    multilayer = [row for row in rows if row["adapter"] == "multilayer_folder"]
    assert all(len(row["layers_uri_foreground"]) == 4 and row["source_composite_psnr"] >= 35 for row in multilayer)
    assert all(row["source_background"] == row["source_foreground"] for row in multilayer)
    assert summary["inputs"]["discovered"] == summary["inputs"]["accounted"]
    assert validate_dataset(out).ok
    assert os.path.basename(next(r for r in rows if r["adapter"] == "matte_pair")["source_foreground"]) == "lemur.png"
