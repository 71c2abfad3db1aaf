"""Layered-image adapters: recognise each layout users keep layered images in, and read it into one `LayerStack`.

One class per layout. Discovery (`datagen.sources`) asks them what a folder holds (`FgBgFolder`, `MultilayerFolder`,
`claim_entries` for sibling folders and matte pairs, `PsdDocument` for a file); decoding (`datagen.decode`) asks them
to read a recognised input (`read_stack`) at source resolution, then fits the stack to the build size.
Refusals are one-line `InputError`s (or a `Found` with an `error`, at discovery): a bad input never stops a build.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from manifests.errors import InputError, one_line
from manifests.layers import Adapter, flatten

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
PSD_EXTENSIONS = frozenset({".psd", ".psb"})
OPAQUE = 1.0 - 0.5 / 255  # an alpha that quantises to 255

# Folder layouts (file stems, lower case).
FG_BG_NAMES = ("foreground", "background")
BG_NAMES = ("bg", "background")
COMPOSITE_NAMES = ("whole", "composite")  # `whole`: bg + layers (full composite); `composite`: the layers only (RGBA)
LAYER_NAME = re.compile(r"^layer[_-]?(\d+)$", re.IGNORECASE)
# Sibling folders: fg/x + bg/x (+ merged/x or composite/x), matched by file stem.
SIBLING_FG, SIBLING_BG, SIBLING_COMPOSITES = "fg", "bg", ("merged", "composite")
# Image + matte: `x` beside `x_alpha` (or `_matte`, `_mask`); `x_trimap`, `x_cutout` beside a pair are companions.
MATTE_SUFFIXES = ("_alpha", "_matte", "_mask")
COMPANION_SUFFIXES = ("_trimap", "_cutout")
IMAGE_FOLDERS = ("images", "image", "input")
MATTE_FOLDERS = ("alpha", "alphas", "matte", "gt_alpha")
# PSD: what may be composited as an "over" layer. Any other blend mode changes the pixels below it: refused.
PSD_LAYER_BLENDS = frozenset({"NORMAL"})
PSD_GROUP_BLENDS = frozenset({"NORMAL", "PASS_THROUGH"})
PSD_COLOUR_MODES = frozenset({"RGB", "GRAYSCALE"})


@dataclass(frozen=True)
class Found:
    """An input an adapter recognised: its uri, its layout, the files it reads (role -> path: `foreground`,
    `background`, `alpha`, `composite`, `layer_<k>`), and the files beside it that it takes as no layer
    (`companions`: a trimap, a cut-out, a composite used only as a check). With `error`: a path it refuses."""

    uri: str
    adapter: Adapter
    files: dict[str, str] = field(default_factory=dict)
    companions: tuple[str, ...] = ()
    error: str | None = None


@dataclass
class Claim:
    """What the adapters take of one folder's entries: inputs (`found`), the entry names they account for (not walked
    again), and files inside claimed subfolders that are no image (for the walker to classify: sidecar or failure)."""

    found: list[Found] = field(default_factory=list)
    names: set[str] = field(default_factory=set)
    others: list[Path] = field(default_factory=list)


@dataclass
class ImageLayer:
    """One foreground layer at source resolution: straight colour (H, W, 3) uint8, alpha (H, W) float in [0, 1], and
    what it was read from (a file, or `doc.psd#<layer name>`)."""

    colour: np.ndarray
    alpha: np.ndarray
    source: str


@dataclass
class LayerStack:
    """A layered image at source resolution, as an adapter read it.

    `layers`: the foreground layers, bottom to top. `background`: (H, W, 3) uint8, or None when the input is pasted
    onto other backgrounds (a matte pair, a PSD with no opaque bottom layer). `composite`: the source's own full
    composite (H, W, 3) uint8, only to check the recomposition. `estimate_colour`: the layer colour is the raw image
    of an image + matte pair, to be replaced by a foreground estimate once fitted to the build size.
    """

    layers: list[ImageLayer]
    background: np.ndarray | None
    composite: np.ndarray | None = None
    estimate_colour: bool = False


def _images(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir()
                      if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)
    except OSError:
        return []


def _abs(path: Path) -> str:
    return os.path.abspath(path)  # as `datagen.sources` spells an input's uri


# Reading pixels -------------------------------------------------------------------------------------------------

def read_image(path: Path, max_pixels: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, 3) uint8 and (H, W) float alpha or None; the size is checked before pixels are decoded."""
    if path.stat().st_size == 0:
        raise InputError("empty file (0 bytes)")
    try:
        with Image.open(path) as image:
            _check_size(image.size, max_pixels)
            image = ImageOps.exif_transpose(image)
            has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
            rgba = np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
    except InputError:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        raise InputError(f"not a readable image: {one_line(exc)}") from exc
    if has_alpha:
        return np.ascontiguousarray(rgba[..., :3]), rgba[..., 3].astype(np.float32) / 255.0
    return rgba, None


def read_matte(path: Path, max_pixels: int) -> np.ndarray:
    """A matte as (H, W) float alpha: one channel (8 or 16 bit), RGB with equal channels, or the alpha of an RGBA
    (or grey + alpha) file whose alpha is not opaque everywhere."""
    try:
        with Image.open(path) as image:
            _check_size(image.size, max_pixels)
            image = ImageOps.exif_transpose(image)
            mode = image.mode
            values = np.asarray(image.convert("L") if mode in ("P", "1") else image)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"not a readable matte {path.name}: {one_line(exc)}") from exc
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return np.clip(values.astype(np.float32) / 65535.0, 0.0, 1.0)
    if mode == "F":
        return np.clip(values.astype(np.float32), 0.0, 1.0)
    if values.ndim == 3 and values.shape[-1] in (2, 4) and values[..., -1].min() < 255:
        return values[..., -1].astype(np.float32) / 255.0  # the alpha of an RGBA / LA file
    if values.ndim == 3:
        grey = values[..., :3] if values.shape[-1] >= 3 else values[..., :1]
        if np.abs(grey.astype(np.int16) - grey[..., :1].astype(np.int16)).max() > 1:
            raise InputError(f"matte {path.name} is a colour image (its channels differ), not a matte")
        values = grey[..., 0]
    return values.astype(np.float32) / 255.0


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise InputError(f"image too large: {width}x{height} = {width * height / 1e6:.0f} MP > --max-pixels "
                         f"{max_pixels / 1e6:.0f} MP")


def _same_size(named: dict[str, np.ndarray]) -> None:
    """Aligned layers share one canvas: every array the same height and width."""
    sizes = {name: array.shape[:2] for name, array in named.items()}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{name} {w}x{h}" for name, (h, w) in sizes.items())
        raise InputError(f"layers differ in size ({listed}): a layered image needs one canvas")


def _read_composite(files: dict[str, str], background: np.ndarray, max_pixels: int) -> np.ndarray | None:
    """The source's full composite, to check the recomposition with: an opaque file (`whole.*`, `merged/x`) as it is;
    one with alpha (`composite.*`: the layers alone) painted over the background. None: no composite, or one that is
    not on the background's canvas."""
    if "composite" not in files:
        return None
    colour, alpha = read_image(Path(files["composite"]), max_pixels)
    if colour.shape != background.shape:
        return None
    return colour if alpha is None else _over_background(colour, alpha, background)


def _over_background(colour: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float32)[..., None]
    return np.clip(np.rint(a * colour + (1.0 - a) * background), 0, 255).astype(np.uint8)


# The layouts ----------------------------------------------------------------------------------------------------

class FgBgFolder:
    """A folder with `foreground.*` (RGBA) and `background.*`: one layer on its own background."""

    adapter = Adapter.FG_BG_FOLDER

    @staticmethod
    def recognise(folder: Path, images: list[Path]) -> Found | None:
        stems = {p.stem.lower(): p for p in images}
        if not all(name in stems for name in FG_BG_NAMES):
            return None
        files = {name: _abs(stems[name]) for name in FG_BG_NAMES}
        composite = next((stems[name] for name in COMPOSITE_NAMES if name in stems), None)
        if composite is not None:
            files["composite"] = _abs(composite)
        taken = {stems[name] for name in FG_BG_NAMES}
        return Found(_abs(folder), FgBgFolder.adapter, files=files,
                     companions=tuple(_abs(p) for p in images if p not in taken))

    @staticmethod
    def read(uri: str, files: dict[str, str], max_pixels: int) -> LayerStack:
        foreground = Path(files["foreground"])
        colour, alpha = read_image(foreground, max_pixels)
        background, _ = read_image(Path(files["background"]), max_pixels)
        if alpha is None:
            raise InputError(f"{foreground.name} has no alpha channel (a layered image needs an RGBA foreground)")
        return LayerStack([ImageLayer(colour, alpha, str(foreground))], background,
                          _read_composite(files, background, max_pixels))


class MultilayerFolder:
    """A folder with `bg.*` and `layer_0.*` .. `layer_<k>.*` (RGBA, one canvas, bottom to top), optionally `whole.*`
    (the full composite: bg and layers) or `composite.*` (the layers alone, RGBA), used only to check the
    recomposition. A `layer_<k>` folder without a background is refused at discovery."""

    adapter = Adapter.MULTILAYER_FOLDER

    @staticmethod
    def recognise(folder: Path, images: list[Path]) -> Found | None:
        layers = {int(m.group(1)): p for p in images if (m := LAYER_NAME.match(p.stem))}
        if not layers:
            return None
        stems = {p.stem.lower(): p for p in images}
        background = next((stems[name] for name in BG_NAMES if name in stems), None)
        if background is None:
            names = ", ".join(p.name for _, p in sorted(layers.items()))
            return Found(_abs(folder), MultilayerFolder.adapter,
                         error=f"layer folder without a background: {names} but no bg.* (or background.*)")
        files = {"background": _abs(background), **{f"layer_{k}": _abs(p) for k, p in sorted(layers.items())}}
        composite = next((stems[name] for name in COMPOSITE_NAMES if name in stems), None)
        if composite is not None:
            files["composite"] = _abs(composite)
        taken = {background, *layers.values()}
        return Found(_abs(folder), MultilayerFolder.adapter, files=files,
                     companions=tuple(_abs(p) for p in images if p not in taken))

    @staticmethod
    def read(uri: str, files: dict[str, str], max_pixels: int) -> LayerStack:
        background, _ = read_image(Path(files["background"]), max_pixels)
        layers = []
        for role in sorted((r for r in files if r.startswith("layer_")), key=lambda r: int(r.split("_")[1])):
            path = Path(files[role])
            colour, alpha = read_image(path, max_pixels)
            if alpha is None:
                raise InputError(f"{path.name} has no alpha channel (every layer_<k> must be RGBA)")
            layers.append(ImageLayer(colour, alpha, str(path)))
        _same_size({"bg": background, **{Path(layer.source).name: layer.colour for layer in layers}})
        return LayerStack(layers, background, _read_composite(files, background, max_pixels))


class SiblingFolders:
    """Sibling folders `fg/` (RGBA), `bg/` and optionally `merged/` (or `composite/`) whose files match by stem: one
    input per matching name (a frozen-frame triplet); an image with no match is a failed input."""

    adapter = Adapter.SIBLING_FOLDERS

    @staticmethod
    def claim(dirs: dict[str, Path]) -> Claim | None:
        if SIBLING_FG not in dirs or SIBLING_BG not in dirs:
            return None
        fg, bg = _by_stem(_images(dirs[SIBLING_FG])), _by_stem(_images(dirs[SIBLING_BG]))
        if not fg.keys() & bg.keys():
            return None  # two pools of unrelated images, not a sibling layout
        composite_dir = next((name for name in SIBLING_COMPOSITES if name in dirs), None)
        composites = _by_stem(_images(dirs[composite_dir])) if composite_dir else {}
        claim = Claim(names={SIBLING_FG, SIBLING_BG} | ({composite_dir} if composite_dir else set()))
        for stem in sorted(fg.keys() | bg.keys() | composites.keys()):
            if stem in fg and stem in bg:
                files = {"foreground": _abs(fg[stem]), "background": _abs(bg[stem])}
                if stem in composites:
                    files["composite"] = _abs(composites[stem])
                claim.found.append(Found(files["foreground"], SiblingFolders.adapter, files,
                                         tuple(v for k, v in files.items() if k == "composite")))
                continue
            present = [(folder, images[stem]) for folder, images in
                       ((SIBLING_FG, fg), (SIBLING_BG, bg), (composite_dir, composites)) if stem in images]
            listed = ", ".join(f"{folder}/{path.name}" for folder, path in present)
            claim.found += [Found(_abs(path), SiblingFolders.adapter,
                                  error=f"sibling folders: {stem!r} is not in both fg/ and bg/ (found {listed})")
                            for _, path in present]
        claim.others = [p for name in claim.names for p in sorted(dirs[name].iterdir())
                        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in IMAGE_EXTENSIONS]
        return claim

    read = staticmethod(FgBgFolder.read)  # a triplet reads as a foreground/background folder does


class MattePair:
    """An image and its alpha matte: `x.png` beside `x_alpha.png` / `x_matte.png` / `x_mask.png`, or `images/x`
    beside `alpha/x` (folder names: `IMAGE_FOLDERS`, `MATTE_FOLDERS`). The foreground colour is estimated from image
    and matte (pymatting's `estimate_foreground_ml`), not taken from the raw image; the sample is pasted onto other
    backgrounds. `x_trimap.*` and `x_cutout.*` beside a pair are companions: recorded, not used."""

    adapter = Adapter.MATTE_PAIR

    @staticmethod
    def claim_files(images: list[Path]) -> Claim:
        """Pairs among the image files of one folder; their mattes and companions are no inputs of their own."""
        stems = _by_stem(images)
        claim = Claim()
        for stem, image in sorted(stems.items()):
            mattes = [stems[stem + suffix] for suffix in MATTE_SUFFIXES if stem + suffix in stems]
            if not mattes or image.name in claim.names:  # a matte or companion of a pair is no image of its own
                continue
            extra = mattes[1:] + [stems[stem + s] for s in COMPANION_SUFFIXES if stem + s in stems]
            claim.found.append(Found(_abs(image), MattePair.adapter, {"alpha": _abs(mattes[0])},
                                     tuple(_abs(p) for p in extra)))
            claim.names |= {p.name for p in (mattes + extra)}
        return claim

    @staticmethod
    def beside(image: Path) -> Found | None:
        """The pair an image given on its own (a list file, a glob) makes with a matte beside it, if any."""
        found = MattePair.claim_files(_images(image.parent)).found
        return next((f for f in found if f.uri == _abs(image)), None)

    @staticmethod
    def claim_folders(dirs: dict[str, Path]) -> Claim | None:
        image_dir = next((name for name in IMAGE_FOLDERS if name in dirs), None)
        matte_dir = next((name for name in MATTE_FOLDERS if name in dirs), None)
        if image_dir is None or matte_dir is None:
            return None
        images, mattes = _by_stem(_images(dirs[image_dir])), _by_stem(_images(dirs[matte_dir]))
        claim = Claim(names={image_dir, matte_dir})
        for stem in sorted(images.keys() | mattes.keys()):
            if stem in images and stem in mattes:
                claim.found.append(Found(_abs(images[stem]), MattePair.adapter, {"alpha": _abs(mattes[stem])}))
            elif stem in images:
                claim.found.append(Found(_abs(images[stem]), MattePair.adapter,
                                         error=f"no matte {matte_dir}/{stem}.* for {image_dir}/{images[stem].name}"))
            else:
                claim.found.append(Found(_abs(mattes[stem]), MattePair.adapter,
                                         error=f"no image {image_dir}/{stem}.* for {matte_dir}/{mattes[stem].name}"))
        claim.others = [p for name in claim.names for p in sorted(dirs[name].iterdir())
                        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in IMAGE_EXTENSIONS]
        return claim

    @staticmethod
    def read(uri: str, files: dict[str, str], max_pixels: int) -> LayerStack:
        colour, _ = read_image(Path(uri), max_pixels)  # an RGBA image's own alpha gives way to the matte
        matte_path = Path(files["alpha"])
        alpha = read_matte(matte_path, max_pixels)
        if alpha.shape != colour.shape[:2]:
            (mh, mw), (ih, iw) = alpha.shape, colour.shape[:2]
            raise InputError(f"matte {matte_path.name} is {mw}x{mh}, the image {iw}x{ih}: they must be the same size")
        return LayerStack([ImageLayer(colour, alpha, uri)], None, estimate_colour=True)


def estimate_foreground(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The foreground colour (H, W, 3) uint8 of an image (H, W, 3) uint8 under a matte (H, W) float: pymatting's
    multi-level estimate, which solves `image = alpha * F + (1 - alpha) * B` for a smooth F and B."""
    from pymatting import estimate_foreground_ml  # numba-compiled: imported only where a matte pair is decoded

    foreground = estimate_foreground_ml(image.astype(np.float64) / 255.0, alpha.astype(np.float64))
    return np.clip(np.rint(np.asarray(foreground) * 255.0), 0, 255).astype(np.uint8)


class PsdDocument:
    """A `.psd` / `.psb` document, read with psd-tools.

    Each visible top-level layer or group is one layer: psd-tools composites it alone on the canvas with its layer
    mask, vector mask, opacity, fill opacity and the layers clipped to it (a group: its visible children, its own
    opacity and mask). The bottom layers up to the first that leaves the canvas opaque are the background (flattened);
    the rest are the foreground layers. A document with no opaque bottom is pasted onto other backgrounds; one that is
    all background is a plain image. Refused, with the reason: a blend mode other than normal (pass-through or normal
    for groups), an adjustment layer, a colour mode other than RGB or grayscale.
    """

    adapter = Adapter.PSD

    @staticmethod
    def recognise(path: Path) -> Found | None:
        if path.suffix.lower() not in PSD_EXTENSIONS:
            return None
        return Found(_abs(path), PsdDocument.adapter)

    @staticmethod
    def load(path: Path, max_pixels: int):
        from psd_tools import PSDImage

        if path.stat().st_size == 0:
            raise InputError("empty file (0 bytes)")
        try:
            psd = PSDImage.open(path)
        except Exception as exc:  # psd-tools raises ValueError, struct.error, ... on damaged files
            raise InputError(f"not a readable PSD: {one_line(exc)}") from exc
        _check_size((psd.width, psd.height), max_pixels)
        if psd.color_mode.name not in PSD_COLOUR_MODES:
            raise InputError(f"colour mode {psd.color_mode.name} is not supported (RGB or grayscale documents only)")
        return psd

    @staticmethod
    def refusal(psd) -> str | None:
        """Why the document cannot be split into "over" layers, or None."""
        from psd_tools.api.layers import AdjustmentLayer

        for layer in psd.descendants():
            if not layer.is_visible():
                continue
            if isinstance(layer, AdjustmentLayer):
                return (f"layer {layer.name!r} is an adjustment layer: it changes the layers below it and is no layer "
                        "of its own")
            allowed = PSD_GROUP_BLENDS if layer.is_group() else PSD_LAYER_BLENDS
            if layer.blend_mode.name not in allowed:
                return (f"layer {layer.name!r} blends with {layer.blend_mode.name.lower().replace('_', ' ')}; "
                        f"supported: normal (groups: normal or pass-through)")
        return None

    @staticmethod
    def read(uri: str, files: dict[str, str], max_pixels: int) -> LayerStack:
        from psd_tools.composite import composite

        path = Path(uri)
        psd = PsdDocument.load(path, max_pixels)
        refusal = PsdDocument.refusal(psd)
        if refusal:
            raise InputError(refusal)
        units = []
        try:
            for layer in psd:
                if not layer.is_visible() or layer.clipping:  # a clipping layer is part of the layer it clips to
                    continue
                colour, _, alpha = composite(layer, color=0.0, alpha=0.0, viewport=psd.viewbox, as_layer=True)
                if alpha.max() <= 0.0:
                    continue  # an empty layer adds nothing
                colour = np.repeat(colour, 3, axis=-1) if colour.shape[-1] == 1 else colour[..., :3]
                rgb = np.clip(np.rint(colour * 255.0), 0, 255).astype(np.uint8)
                units.append(ImageLayer(rgb, np.clip(alpha[..., 0], 0.0, 1.0).astype(np.float32),
                                        f"{uri}#{layer.name}"))
            own = psd.composite()
        except InputError:
            raise
        except Exception as exc:  # psd-tools cannot render some layer kinds; one line, not a crash
            raise InputError(f"psd-tools cannot composite this document: {one_line(exc)}") from exc
        if not units:
            raise InputError("no visible layer with pixels")
        composite_rgb = np.asarray(own.convert("RGB"))
        split = PsdDocument._background_end(units)
        if split is None:  # no opaque bottom: the layers are pasted onto other backgrounds
            return LayerStack(units, None)
        background = _flatten_opaque(units[: split + 1])
        return LayerStack(units[split + 1:], background, composite_rgb)

    @staticmethod
    def _background_end(units: list[ImageLayer]) -> int | None:
        """The index of the first layer by which the canvas is opaque everywhere (None: it never is)."""
        coverage = np.zeros(units[0].alpha.shape, np.float32)
        for index, unit in enumerate(units):
            coverage = unit.alpha + (1.0 - unit.alpha) * coverage
            if coverage.min() >= OPAQUE:
                return index
        return None


def _flatten_opaque(units: list[ImageLayer]) -> np.ndarray:
    """The bottom layers of a document, flattened into its (opaque) background."""
    colours = [unit.colour for unit in units]
    alphas = [np.clip(np.rint(unit.alpha * 255.0), 0, 255).astype(np.uint8) for unit in units]
    return flatten(colours, alphas)[0]


def _by_stem(paths: list[Path]) -> dict[str, Path]:
    return {p.stem.lower(): p for p in paths}


# Dispatch -------------------------------------------------------------------------------------------------------

READERS = {cls.adapter: cls.read for cls in (FgBgFolder, MultilayerFolder, SiblingFolders, MattePair, PsdDocument)}


def recognise_folder(folder: Path) -> Found | None:
    """A folder that is one layered image (foreground/background, or bg + layer_<k>), or None."""
    images = _images(folder)
    return FgBgFolder.recognise(folder, images) or MultilayerFolder.recognise(folder, images)


def claim_entries(files: list[Path], dirs: list[Path]) -> Claim:
    """What the adapters take of one folder's entries: sibling `fg/ bg/ merged/` folders, `images/ alpha/` folders,
    and image + matte pairs among its files."""
    by_name = {p.name.lower(): p for p in dirs}
    claim = Claim()
    for part in (SiblingFolders.claim(by_name), MattePair.claim_folders(by_name),
                 MattePair.claim_files([p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS])):
        if part is None:
            continue
        claim.found += part.found
        claim.names |= {by_name[name].name if name in by_name else name for name in part.names}
        claim.others += part.others
    return claim


def read_stack(adapter: Adapter, uri: str, files: dict[str, str], max_pixels: int) -> LayerStack:
    """Read a recognised input with its adapter, at source resolution."""
    return READERS[adapter](uri, files, max_pixels)
