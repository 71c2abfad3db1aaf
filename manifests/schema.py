"""The dataset contract: explicit Arrow schemas of the manifest, failures and inputs tables, and the file layout.

Readable as-is by pyarrow, DuckDB, Polars and Hugging Face `datasets`:
`<root>/manifest/part-*.parquet` (one row per sample), `<root>/failures.parquet`,
`<root>/inputs.parquet`, `<root>/_summary.json`, media under `<root>/media/<sample_id>/`.
"""

from __future__ import annotations

import pyarrow as pa

from manifests.layers import RGB_LAYERS, Layer

# 3: caption_layers, caption_missing. 4: adapter, layers_uri_foreground|alpha, layers_caption, layers_source,
# source_companions, source_composite_psnr (a manifest of version 3 reads with them null: `foreground_layers`).
# 5 (one bump for all of these):
# - manifest: clean_plate, foreground_colour, plate_invented_uri, plate_invented_mean|max, plate_stability
#   (`video_decomposed`; a manifest of version 4 reads with them null)
# - inputs: relative_path, source_size, source_version, fingerprint, group, duplicate_of; state `duplicate`
# 6: manifest group_foreground, group_background; inputs background_group (a manifest of version 5 reads with them
#    null: its split went by the foreground's group alone)
SCHEMA_VERSION = "6"
SCHEMA_METADATA = {b"layerflow.schema_version": SCHEMA_VERSION.encode(), b"layerflow.table": b""}

MANIFEST_DIR = "manifest"
FAILURES_FILE = "failures.parquet"
INPUTS_FILE = "inputs.parquet"
SUMMARY_FILE = "_summary.json"
MEDIA_DIR = "media"
# One file per layer: RGB layers lossy H.264, alpha lossless FFV1 (8-bit grey).
MEDIA_FILES: dict[Layer, str] = {
    Layer.FOREGROUND: "foreground.mp4",
    Layer.ALPHA: "alpha.mkv",
    Layer.BACKGROUND: "background.mp4",
    Layer.BLENDED: "blended.mp4",
}
LAYERS_DIR = "layers"  # a sample with several foreground layers: media/<sample_id>/layers/<k>_foreground.mp4, ...


# Column names that code outside this file reads or writes by name (the schemas below are built from them).
SAMPLE_ID = "sample_id"
KIND = "kind"
SPLIT = "split"
INPUT_ID = "input_id"
URI = "uri"
STATE = "state"
RECOMPOSE_PSNR = "recompose_psnr"
CLIP_EMBEDDING = "clip_embedding"  # L2-normalised CLIP embedding of the blended layer (near-duplicates)
CLIP_MODEL = "clip_model"
KEEP = "keep"
REJECT_REASONS = "reject_reasons"
FLAGS = "flags"
DUPLICATE_OF = "duplicate_of"
CAPTION_LAYERS = "caption_layers"  # how many of the captioned layers have a non-empty caption (0..3)
CAPTION_MISSING = "caption_missing"  # why the others have none: "foreground: no sidecar caption; ..."; null if none
ADAPTER = "adapter"  # Adapter: how the foreground input was read (copy_paste, multilayer_folder, psd, ...)
# The foreground layers, bottom to top (one list entry per layer; a one-layer sample lists `uri_foreground`,
# `uri_alpha` and `caption_foreground` themselves). `foreground`/`alpha` stay their flattened view (`flatten`).
LAYERS_URI_FOREGROUND = "layers_uri_foreground"
LAYERS_URI_ALPHA = "layers_uri_alpha"
LAYERS_CAPTION = "layers_caption"
LAYERS_SOURCE = "layers_source"  # what each layer was read from: a file, or `doc.psd#<layer name>`
SOURCE_COMPANIONS = "source_companions"  # files the adapter recognised beside the input and took as no layer
SOURCE_COMPOSITE_PSNR = "source_composite_psnr"  # blended (before encoding) vs the source's own composite, dB
# How the layers of a sample were made, beside `matting_backend` (so a trainer can weight real against synthetic):
CLEAN_PLATE = "clean_plate"  # the clean-plate method behind the foreground (`temporal`); null: a real background clip
FOREGROUND_COLOUR = "foreground_colour"  # ForegroundColour: where the foreground's straight colour comes from
# `video_decomposed`: a mask (lossless, 255 = invented) of the plate pixels no frame of the clip showed
PLATE_INVENTED_URI = "plate_invented_uri"
PLATE_INVENTED_FILE = "plate_invented.mkv"
PLATE_SCORES = ("plate_invented_mean", "plate_invented_max", "plate_stability")
# The identities the split went by (`manifests.identity`): the foreground's object and the sample's background. A
# family is the part of a group before its first "/" ("shape/star-03" is of family "shape"; no "/": its own family).
GROUP_FOREGROUND = "group_foreground"
GROUP_BACKGROUND = "group_background"
DECISION_COLUMNS = (KEEP, REJECT_REASONS, FLAGS, DUPLICATE_OF)  # what a policy decides (`layerflow-data filter`)


def uri_column(layer: Layer) -> str:
    return f"uri_{layer.value}"


def caption_column(layer: Layer) -> str:
    return f"caption_{layer.value}"


def media_uri(sample_id: str, layer: Layer) -> str:
    """The media file of one layer, relative to the dataset root (posix separators)."""
    return f"{MEDIA_DIR}/{sample_id}/{MEDIA_FILES[layer]}"


def layer_media_uri(sample_id: str, index: int, layer: Layer) -> str:
    """The foreground or alpha file of foreground layer `index` (0 = bottom) of a sample with several layers."""
    return f"{MEDIA_DIR}/{sample_id}/{LAYERS_DIR}/{index}_{MEDIA_FILES[layer]}"


def plate_invented_uri(sample_id: str) -> str:
    """The mask of the invented (inpainted) clean-plate pixels of a `video_decomposed` sample."""
    return f"{MEDIA_DIR}/{sample_id}/{PLATE_INVENTED_FILE}"


def foreground_layers(row: dict) -> list[tuple[str, str, str | None]]:
    """(foreground uri, alpha uri, caption) of each foreground layer of a manifest row, bottom to top. A row written
    before schema 4 has no layer lists: its flattened foreground is its one layer."""
    if row.get(LAYERS_URI_FOREGROUND) is None:
        return [(row[uri_column(Layer.FOREGROUND)], row[uri_column(Layer.ALPHA)],
                 row.get(caption_column(Layer.FOREGROUND)))]
    return list(zip(row[LAYERS_URI_FOREGROUND], row[LAYERS_URI_ALPHA], row[LAYERS_CAPTION], strict=True))


# Every score is a nullable float32 column: null means it could not be computed (the summary says why),
# and a null score never rejects a sample.
SCORES: dict[str, str] = {
    RECOMPOSE_PSNR: "PSNR (dB) of the blended file against alpha*fg + (1-alpha)*bg, all read back from the files",
    "alpha_coverage_mean": "mean over frames of the mean alpha (0..1)",
    "alpha_coverage_min": "lowest per-frame mean alpha",
    "alpha_coverage_max": "highest per-frame mean alpha",
    "alpha_iou_mean": "mean IoU of consecutive binarised (alpha >= 0.5) mattes: temporal stability",
    "alpha_iou_min": "lowest IoU of consecutive binarised mattes (a jump or a lost object)",
    "alpha_empty_frames": "fraction of frames with no foreground pixel at all",
    "alpha_full_frames": "fraction of frames that are opaque everywhere (no background visible)",
    "alpha_soft_fraction": "fraction of foreground pixels (alpha > 0) that are partly transparent (0 < alpha < 1)",
    **{f"ssim_{layer.value}_{stat}": f"{text} SSIM of consecutive {layer.value} frames"
       + (" (over neutral grey)" if layer is Layer.FOREGROUND else "")
       for layer in RGB_LAYERS
       for stat, text in (("mean", "mean"), ("min", "lowest"), ("drop", "median minus lowest"))},
    **{f"clip_text_{layer.value}": f"CLIP cosine of the {layer.value} layer"
       + (" (over neutral grey)" if layer is Layer.FOREGROUND else "") + " with its caption"
       for layer in RGB_LAYERS},
    "clip_consistency_mean": "mean CLIP cosine of the first blended frame with each later frame",
    "clip_consistency_min": "lowest CLIP cosine of the first blended frame with a later frame",
    "plate_invented_mean": "video_decomposed: mean over frames of the share of the covered background (alpha > 0) that "
                           "no frame of the clip showed, so the clean plate invented it (inpainting)",
    "plate_invented_max": "video_decomposed: highest per-frame share of the covered background the plate invented",
    "plate_stability": "video_decomposed: PSNR (dB) of each frame's clean plate against the previous frame's "
                       "background moved by the camera, mean over consecutive frames (higher: steadier)",
}
CLIP_COLUMNS = tuple(name for name in SCORES if name.startswith("clip_"))
SCORE_FIELDS = [pa.field(name, pa.float32()) for name in SCORES]
# What a policy rule may test: the scores, and how complete the captions are (a count, never null).
RULE_COLUMNS: dict[str, str] = {
    **SCORES,
    CAPTION_LAYERS: "how many of foreground, background and blended have a non-empty caption (0..3)",
}


def _with_metadata(schema: pa.Schema, table: str) -> pa.Schema:
    return schema.with_metadata({**SCHEMA_METADATA, b"layerflow.table": table.encode()})


SAMPLE_SCHEMA = _with_metadata(pa.schema([
    pa.field(SAMPLE_ID, pa.string(), nullable=False),
    pa.field(KIND, pa.string(), nullable=False),  # SampleKind
    pa.field(ADAPTER, pa.string(), nullable=False),  # Adapter
    pa.field(SPLIT, pa.string(), nullable=False),  # train | val
    *[pa.field(uri_column(layer), pa.string(), nullable=False) for layer in Layer],
    *[pa.field(caption_column(layer), pa.string()) for layer in (Layer.FOREGROUND, Layer.BACKGROUND, Layer.BLENDED)],
    pa.field(CAPTION_LAYERS, pa.int8(), nullable=False),
    pa.field(CAPTION_MISSING, pa.string()),
    # the foreground layers, bottom to top; flattened into `uri_foreground` / `uri_alpha` by straight-alpha "over":
    # alpha = 1 - prod(1 - a_k), colour = the premultiplied over-result / alpha (`manifests.layers.flatten`)
    pa.field(LAYERS_URI_FOREGROUND, pa.list_(pa.string()), nullable=False),
    pa.field(LAYERS_URI_ALPHA, pa.list_(pa.string()), nullable=False),
    pa.field(LAYERS_CAPTION, pa.list_(pa.string()), nullable=False),  # an entry is null where a layer has no caption
    pa.field("num_frames", pa.int32(), nullable=False),
    pa.field("fps", pa.float32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    # provenance
    pa.field("input_id_foreground", pa.string(), nullable=False),
    pa.field("input_id_background", pa.string(), nullable=False),
    pa.field(GROUP_FOREGROUND, pa.string()),  # the foreground's object identity (its input's `group`)
    pa.field(GROUP_BACKGROUND, pa.string()),  # the background's identity (`background_group` of its input)
    pa.field("source_foreground", pa.string(), nullable=False),
    pa.field("source_background", pa.string(), nullable=False),
    pa.field(LAYERS_SOURCE, pa.list_(pa.string()), nullable=False),
    pa.field(SOURCE_COMPANIONS, pa.list_(pa.string()), nullable=False),  # a trimap or cut-out beside a matte pair
    pa.field(SOURCE_COMPOSITE_PSNR, pa.float32()),  # null: the source has no composite of its own to compare with
    pa.field(CLEAN_PLATE, pa.string()),  # `temporal`: the background behind the foreground is a clean plate
    pa.field(FOREGROUND_COLOUR, pa.string()),  # source | estimated | solved (null: a manifest before schema 5)
    pa.field(PLATE_INVENTED_URI, pa.string()),  # `video_decomposed` only
    pa.field("frames_foreground", pa.list_(pa.int32()), nullable=False),  # exact source frame indices
    pa.field("frames_background", pa.list_(pa.int32()), nullable=False),
    pa.field("placement", pa.string(), nullable=False),  # JSON {"scale", "dx", "dy"}
    pa.field("matting_backend", pa.string(), nullable=False),
    pa.field("matting_model", pa.string()),
    pa.field("matting_weights_sha256", pa.string()),
    pa.field("matting_revision", pa.string()),  # the hub commit of fetched weights (None: a local or URL file)
    # True: randomly initialised weights (`sam2:<config>:random`, tests and benchmarks only): not training data
    pa.field("random_weights", pa.bool_(), nullable=False),
    pa.field("captioner", pa.string(), nullable=False),  # hf:<model id>@<commit> for a hub model
    pa.field("captioner_weights_sha256", pa.string()),
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("config_fingerprint", pa.string(), nullable=False),
    *SCORE_FIELDS,
    pa.field(CLIP_EMBEDDING, pa.list_(pa.float32())),
    pa.field(CLIP_MODEL, pa.string()),  # "<arch>:<weights file>" that produced the clip_* scores
    pa.field("clip_weights_sha256", pa.string()),
    # policy (recomputed by `layerflow-data filter` from the scores above, with no model)
    pa.field(KEEP, pa.bool_(), nullable=False),
    pa.field(REJECT_REASONS, pa.list_(pa.string()), nullable=False),  # rules that fired: "ssim_blended_mean>0.995"
    pa.field(FLAGS, pa.list_(pa.string()), nullable=False),  # rules that fired but the sample kind allows
    pa.field(DUPLICATE_OF, pa.string()),  # the kept sample this one nearly duplicates (CLIP cosine)
]), "manifest")

FAILURE_SCHEMA = _with_metadata(pa.schema([
    pa.field(INPUT_ID, pa.string(), nullable=False),
    pa.field(URI, pa.string(), nullable=False),
    pa.field("stage", pa.string(), nullable=False),  # Stage
    pa.field("error_class", pa.string(), nullable=False),
    pa.field("message", pa.string(), nullable=False),  # one line
    pa.field(SAMPLE_ID, pa.string()),  # set when a planned sample failed
    pa.field("related_uris", pa.list_(pa.string()), nullable=False),
]), "failures")

INPUT_SCHEMA = _with_metadata(pa.schema([
    pa.field(INPUT_ID, pa.string(), nullable=False),
    pa.field(URI, pa.string(), nullable=False),
    pa.field(KIND, pa.string(), nullable=False),  # InputKind
    pa.field("role", pa.string(), nullable=False),  # Role
    pa.field("pool", pa.string(), nullable=False),  # source | backgrounds
    pa.field(STATE, pa.string(), nullable=False),  # InputState
    pa.field("stage", pa.string()),  # where it failed (or, for a used input, the stage with a remark)
    pa.field("message", pa.string()),  # why it failed (or e.g. why it was used as a background only)
    pa.field("sample_ids", pa.list_(pa.string()), nullable=False),
    pa.field("source_frames", pa.int32()),
    pa.field("source_height", pa.int32()),
    pa.field("source_width", pa.int32()),
    pa.field("matting_backend", pa.string()),
    pa.field("matting_device", pa.string()),  # cpu | cuda: where the matting backend ran
    # How the camera moved, where the matting backend measured it (bgsub: px per frame): JSON {"pan_px", "shake_px",
    # "residual_px", "extent_px", "stabilised", ...}; null where nothing was measured.
    pa.field("camera_motion", pa.string()),
    # identity (`manifests.identity`): the path relative to --source, bytes, version (size + mtime, or `etag:<ETag>`
    # on object storage), the content fingerprint (pHash of a few frames), the group the split went by, and the input
    # id this one duplicates (state `duplicate`; `message` says how it was seen)
    pa.field("relative_path", pa.string(), nullable=False),
    pa.field("source_size", pa.int64(), nullable=False),
    pa.field("source_version", pa.string(), nullable=False),
    pa.field("fingerprint", pa.string()),
    pa.field("group", pa.string()),
    pa.field("background_group", pa.string()),  # the identity of what is behind the object (null: `group`)
    pa.field(DUPLICATE_OF, pa.string()),
]), "inputs")


def to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows -> table with exactly `schema`; unknown or missing columns are errors, not silent nulls."""
    names = set(schema.names)
    for row in rows:
        if set(row) != names:
            extra, missing = sorted(set(row) - names), sorted(names - set(row))
            raise ValueError(f"row does not match the {schema.metadata[b'layerflow.table'].decode()} schema: "
                             f"unknown {extra}, missing {missing}")
    return pa.Table.from_pylist(rows, schema=schema)
