"""`report`: one self-contained static HTML page about a built dataset: funnel, score histograms, gallery, failures.

Everything is inline (CSS, SVG, images as base64 `data:` URIs), so the file opens offline and can be mailed around.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from io import BytesIO
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from filters.apply import read_policy
from filters.policy import Op, Policy, Rule
from manifests import video_io
from manifests.dataset import Dataset, DatasetLike, open_dataset
from manifests.layers import CAPTIONED_LAYERS, InputState, Layer
from manifests.preview import GAP, TILE_NAMES, TILE_ORDER, frame_indices, layer_tiles
from manifests.schema import (
    ADAPTER,
    CLEAN_PLATE,
    DUPLICATE_OF,
    FLAGS,
    KEEP,
    KIND,
    PLATE_INVENTED_URI,
    REJECT_REASONS,
    SAMPLE_ID,
    SCORES,
    SPLIT,
    caption_column,
)

REPORT_FILE = "report.html"
TILE_HEIGHT = 160  # tiles are shrunk to at most this many pixels tall to keep the file small
STRIP_HEIGHT = 80
STRIP_FRAMES = 5
JPEG_QUALITY = 85
HISTOGRAM_BINS = 24
# what the report shows of a row (not e.g. the CLIP embeddings, which would cost memory on a large dataset)
_COLUMNS = [SAMPLE_ID, KIND, ADAPTER, SPLIT, KEEP, REJECT_REASONS, FLAGS, DUPLICATE_OF, CLEAN_PLATE, PLATE_INVENTED_URI,
            *(caption_column(layer) for layer in CAPTIONED_LAYERS), *SCORES]
INVENTED_TINT = np.array([255, 0, 255], np.float32)  # the clean-plate pixels no frame showed, over the background
INVENTED_OPACITY = 0.6
_INPUT_ORDER = ("discovered", *(state.value for state in InputState), "accounted")  # the summary stores them sorted
_SVG_WIDTH, _SVG_HEIGHT = 340, 170
_PLOT_LEFT, _PLOT_RIGHT, _PLOT_TOP, _PLOT_BOTTOM = 34, 330, 34, 140  # the bars' box inside the SVG


def write_report(dataset: DatasetLike, out: Path | None = None, gallery: int = 24) -> Path:
    """Write the report of the dataset (a folder, a pyarrow filesystem URI or an open handle) to the local file `out`;
    return its path. Default: `DS/report.html` for a local dataset; for a remote one (s3://...), `report.html` in
    the current folder, since the page is to be opened here (its gallery's media are fetched into the dataset's
    local copy).

    The gallery shows up to `gallery` kept and `gallery` rejected samples, the kinds side by side (taken in turn,
    each kind's by sample_id), so decomposed real clips show beside copy-paste ones.
    """
    dataset = open_dataset(dataset)
    if out is None:
        out = dataset.local_root() / REPORT_FILE if dataset.is_local else Path.cwd() / REPORT_FILE
    out = Path(out)
    summary = dataset.summary()
    rows = dataset.manifest(columns=_COLUMNS).sort_by(SAMPLE_ID).to_pylist()
    failures = dataset.failures().to_pylist()
    policy = read_policy(dataset)
    kept = [row for row in rows if row[KEEP]]
    rejected = [row for row in rows if not row[KEEP]]
    chosen = [("kept", row) for row in _kinds_in_turn(kept, gallery)] + \
        [("rejected", row) for row in _kinds_in_turn(rejected, gallery)]
    cards = {"kept": [], "rejected": []}
    for group, row in tqdm(chosen, desc="report gallery", unit="sample", disable=None):
        cards[group].append(_card(dataset, row, policy))
    body = "\n".join([
        _header(dataset, summary, policy, rows),
        _funnel(summary),
        _histograms(rows, policy, summary),
        _gallery("kept", "Kept samples", cards["kept"], len(kept)),
        _gallery("rejected", "Rejected samples", cards["rejected"], len(rejected)),
        _failures(failures, summary),
    ])
    out.parent.mkdir(parents=True, exist_ok=True)
    name = PurePosixPath(dataset.root).name
    out.write_text(_PAGE.format(title=_e(f"layerflow-data report: {name}"), css=_CSS, body=body),
                   encoding="utf-8")
    return out


def _kinds_in_turn(rows: Sequence[Mapping], count: int) -> list[Mapping]:
    """Up to `count` rows (sorted by sample_id), one of each kind in turn: every kind the dataset has is shown."""
    by_kind: dict[str, list[Mapping]] = {}
    for row in rows:
        by_kind.setdefault(row[KIND], []).append(row)
    queues = [by_kind[kind] for kind in sorted(by_kind)]
    out = []
    for turn in range(max(map(len, queues), default=0)):
        out += [queue[turn] for queue in queues if turn < len(queue)]
    return out[:count]


def _invented_tile(dataset: Dataset, row: Mapping, background: np.ndarray, t: int) -> tuple[np.ndarray, str]:
    """A decomposed sample's background tile with the clean-plate pixels no frame showed tinted, and its caption."""
    invented = video_io.read_layer(dataset.media(row[PLATE_INVENTED_URI]), Layer.ALPHA)[t] > 127
    tinted = background.astype(np.float32)
    tinted[invented] = (1 - INVENTED_OPACITY) * tinted[invented] + INVENTED_OPACITY * INVENTED_TINT
    method = row[CLEAN_PLATE] or "clean plate"
    return np.rint(tinted).astype(np.uint8), f"background ({method}; invented: magenta, {int(invented.sum())} px)"


def _e(value: object) -> str:
    return html.escape(str(value))


def _fmt(value: float | None) -> str:
    return "null" if value is None else f"{value:.3g}"


def _counts(counts: Mapping[str, object]) -> str:
    return ", ".join(f"{_e(key)} {_e(value)}" for key, value in counts.items()) or "none"


def _input_counts(counts: Mapping[str, int]) -> dict[str, int]:
    """The input counts in reading order: discovered, the end states, accounted."""
    return {**{k: counts[k] for k in _INPUT_ORDER if k in counts}, **counts}


def _header(dataset: Dataset, summary: dict, policy: Policy, rows: Sequence[Mapping]) -> str:
    samples, inputs = summary.get("samples", {}), summary.get("inputs", {})
    backends = summary.get("backends", {})
    matting, clip = backends.get("matting", {}), backends.get("clip", {})
    clip_text = _e(clip.get("spec") or "none")
    if clip.get("weights"):
        clip_text += f" ({_e(clip['weights'])})"
    if clip.get("unavailable"):
        clip_text += f' <span class="bad">unavailable: {_e(clip["unavailable"])}</span>'
    facts = [
        ("dataset", f"<code>{_e(dataset.root if dataset.is_local else dataset.uri)}</code>"),
        ("samples", f"{_e(samples.get('total', 0))} total: <b class=\"good\">{_e(samples.get('kept', 0))} kept</b>, "
                    f"<b class=\"bad\">{_e(samples.get('rejected', 0))} rejected</b>"),
        ("by kind", _counts(samples.get("by_kind", {}))),
        ("by adapter", _counts(Counter(row[ADAPTER] or "unrecorded" for row in rows))),  # null: before schema 4
        ("by split", _counts(samples.get("by_split", {}))),
        ("inputs", _counts(_input_counts(inputs))),
        ("failures", f"{_e(summary.get('failures', {}).get('total', 0))} "
                     f"({_counts(summary.get('failures', {}).get('by_stage', {}))})"),
        ("matting", f"requested {_e(matting.get('requested', '?'))}; used {_counts(matting.get('used', {}))}"),
        ("captioner", _e(backends.get("captioner", "?"))),
        ("CLIP", clip_text),
        *((f"{option} model", f"{_e(stage.get('runs') or 'none')}: {_e(stage.get('why', ''))}")
          for option, stage in backends.get("models", {}).items()),  # what ran per learned stage, and why
        *([("weights", '<span class="bad">randomly initialised (tests and benchmarks only): not training '
                       "data</span>")] if summary.get("random_weights") else []),
        ("policy", f"<code>{_e(summary.get('policy', {}).get('source', policy.source))}</code>"),
        ("build time", f"{_e(summary.get('seconds', {}).get('wall', '?'))} s"),
    ]
    rows = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in facts)
    config = _e(json.dumps(summary.get("config", {}), indent=2, sort_keys=True))
    nav = " · ".join(f'<a href="#{anchor}">{name}</a>' for anchor, name in (
        ("funnel", "funnel"), ("scores", "scores"), ("kept", "kept"), ("rejected", "rejected"),
        ("failures", "failures")))
    return (f"<header><h1>layerflow-data report</h1><nav>{nav}</nav>"
            f'<table class="facts">{rows}</table>'
            f"<details><summary>build config</summary><pre>{config}</pre></details></header>")


def _funnel(summary: dict) -> str:
    funnel = summary.get("policy", {}).get("funnel")
    if funnel is None:
        return '<section id="funnel"><h2>Funnel</h2><p>No policy has been applied to this dataset.</p></section>'
    head = "<tr><th>rule</th><th>why</th><th>drops alone</th><th>left after</th><th>flagged</th><th>unscored</th></tr>"
    rows = [f'<tr class="total"><td>(all samples)</td><td></td><td></td><td class="num">{_e(funnel["total"])}</td>'
            "<td></td><td></td></tr>"]
    for step in funnel["steps"]:
        rows.append(
            f'<tr class="rule"><td class="rule-name"><code>{_e(step["rule"])}</code></td><td>{_e(step["why"])}</td>'
            f'<td class="num{" bad" if step["alone"] else ""}">{_e(step["alone"])}</td>'
            f'<td class="num">{_e(step["left"])}</td>'
            f'<td class="num{" warn" if step["flagged"] else ""}">{_e(step["flagged"])}</td>'
            f'<td class="num{" muted" if not step["unscored"] else ""}">{_e(step["unscored"])}</td></tr>')
    unscored = _grouped_by_reason(funnel.get("unscored_why", {}))
    return (f'<section id="funnel"><h2>Funnel</h2><table class="funnel">{head}{"".join(rows)}</table>'
            f'<p>kept <b>{_e(funnel["kept"])}</b> of {_e(funnel["total"])} samples. A rule cannot fire on a null '
            f"score; the unscored column counts those samples.</p>"
            + (f'<p>Why scores are null:</p><ul class="unscored">{unscored}</ul>' if unscored else "")
            + "</section>")


def _histograms(rows: Sequence[Mapping], policy: Policy, summary: dict) -> str:
    figures, empty = [], {}  # empty: score column -> why it has no value
    for score, description in SCORES.items():
        values = [row[score] for row in rows if row[score] is not None and not math.isnan(row[score])]
        if not values:
            recorded = summary.get("unscored", {}).get(score, {}).get("why")
            why = recorded or ("no samples" if not rows else "no reason recorded")
            empty[score] = why
            continue
        rules = policy.rule(score)
        rule_text = ", ".join(f"<code>{_e(rule.name)}</code>" for rule in rules) or '<span class="muted">no rule</span>'
        figures.append(
            f'<figure class="hist"><figcaption><b>{_e(score)}</b><br><span class="muted">{_e(description)}</span>'
            f"</figcaption>{histogram_svg(score, values, rules)}"
            f'<div class="under">{len(values)} values · <span class="nulls">{len(rows) - len(values)} null</span>'
            f" · {rule_text}</div></figure>")
    null_line = _grouped_by_reason(empty)
    return ('<section id="scores"><h2>Scores</h2>'
            '<p>One histogram per score; red lines are the policy bounds, the shaded side is where the rule fires.</p>'
            f'<div class="hists">{"".join(figures)}</div>'
            + (f'<p>Scores with no value at all:</p><ul class="all-null">{null_line}</ul>' if empty else "")
            + "</section>")


def _grouped_by_reason(why: Mapping[str, str]) -> str:
    """`<li>` items, one per reason, naming the score columns it explains (CLIP's reason covers five)."""
    groups: dict[str, list[str]] = {}
    for score, text in why.items():
        groups.setdefault(text, []).append(score)
    return "".join(f'<li><span class="null-scores">{", ".join(f"<code>{_e(s)}</code>" for s in scores)}</span>: '
                   f"{_e(text)}</li>" for text, scores in groups.items())


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round values (steps of 1, 2, 2.5 or 5 times a power of ten) between lo and hi, about `count` of them."""
    raw = (hi - lo) / count
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def histogram_svg(score: str, values: Sequence[float], rules: Sequence[Rule]) -> str:
    """An inline SVG histogram of `values`, with a red vertical line (named by the rule) at each rule's bound."""
    bounds = [rule.bound for rule in rules]
    lo, hi = min([*values, *bounds]), max([*values, *bounds])
    span = hi - lo or max(abs(lo) * 0.1, 0.05)  # one repeated value still gets a visible bar
    lo, hi = lo - 0.04 * span, hi + 0.04 * span  # a bound at the data's edge stays off the frame
    counts, _ = np.histogram(values, bins=HISTOGRAM_BINS, range=(lo, hi))
    width, height = _PLOT_RIGHT - _PLOT_LEFT, _PLOT_BOTTOM - _PLOT_TOP

    def x_of(value: float) -> float:
        return _PLOT_LEFT + (value - lo) / (hi - lo) * width

    parts = [f'<svg class="histogram" data-score="{_e(score)}" width="{_SVG_WIDTH}" height="{_SVG_HEIGHT}" '
             f'viewBox="0 0 {_SVG_WIDTH} {_SVG_HEIGHT}" role="img" aria-label="histogram of {_e(score)}">',
             f'<rect x="{_PLOT_LEFT}" y="{_PLOT_TOP}" width="{width}" height="{height}" class="plot"/>']
    for rule in rules:  # the side where the rule fires, under the bars
        x = x_of(rule.bound)
        left, right = (_PLOT_LEFT, x) if rule.op is Op.BELOW else (x, _PLOT_RIGHT)
        parts.append(f'<rect x="{left:.1f}" y="{_PLOT_TOP}" width="{right - left:.1f}" height="{height}" '
                     'class="fires"/>')
    bar_width = width / HISTOGRAM_BINS
    top = max(int(counts.max()), 1)
    for i, count in enumerate(counts):
        if count:
            bar = count / top * height
            parts.append(f'<rect x="{_PLOT_LEFT + i * bar_width + 0.5:.1f}" y="{_PLOT_BOTTOM - bar:.1f}" '
                         f'width="{bar_width - 1:.1f}" height="{bar:.1f}" class="bar">'
                         f"<title>{int(count)}</title></rect>")
    for i, rule in enumerate(rules):
        x = x_of(rule.bound)
        anchor, dx = ("end", -3) if x > _PLOT_LEFT + width / 2 else ("start", 3)
        parts.append(f'<line class="threshold" data-rule="{_e(rule.name)}" x1="{x:.1f}" x2="{x:.1f}" '
                     f'y1="{_PLOT_TOP - 4 - 11 * i}" y2="{_PLOT_BOTTOM}"/>'
                     f'<text class="rule-label" x="{x + dx:.1f}" y="{_PLOT_TOP - 6 - 11 * i}" '
                     f'text-anchor="{anchor}">{_e(rule.name)}</text>')
    parts.append(f'<text x="{_PLOT_LEFT - 3}" y="{_PLOT_TOP + 9}" text-anchor="end">{top}</text>'
                 f'<text x="{_PLOT_LEFT - 3}" y="{_PLOT_BOTTOM}" text-anchor="end">0</text>')
    for value in _ticks(lo, hi):
        x = x_of(value)
        parts.append(f'<line class="tick" x1="{x:.1f}" x2="{x:.1f}" y1="{_PLOT_BOTTOM}" y2="{_PLOT_BOTTOM + 3}"/>'
                     f'<text x="{x:.1f}" y="{_PLOT_BOTTOM + 14}" text-anchor="middle">{_fmt(value)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _shrink(image: np.ndarray, max_height: int) -> np.ndarray:
    """An (H, W, 3) uint8 image shrunk to at most `max_height` tall, aspect kept (never enlarged)."""
    height, width = image.shape[:2]
    if height <= max_height:
        return image
    size = (max(1, round(width * max_height / height)), max_height)
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def _img(image: np.ndarray, alt: str) -> str:
    """An <img> holding `image` as a JPEG `data:` URI."""
    buffer = BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    uri = f"data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"
    return f'<img src="{uri}" width="{image.shape[1]}" height="{image.shape[0]}" alt="{_e(alt)}">'


def _card(dataset: Dataset, row: Mapping, policy: Policy) -> str:
    """One sample: the four layers of its middle frame, a strip of blended frames, captions, scores, decision."""
    sample_id = row[SAMPLE_ID]
    try:
        layers = dataset.layers(sample_id)
    except Exception as exc:  # a damaged sample gets a card saying so instead of ending the report
        pictures = f'<p class="bad">media could not be read: {_e(type(exc).__name__)}: {_e(exc)}</p>'
    else:
        num_frames = layers[Layer.ALPHA].shape[0]
        middle = num_frames // 2
        tiles = dict(zip(TILE_ORDER, layer_tiles(layers, middle)))
        names = dict(TILE_NAMES)
        if row[PLATE_INVENTED_URI]:
            tiles[Layer.BACKGROUND], names[Layer.BACKGROUND] = _invented_tile(dataset, row, tiles[Layer.BACKGROUND],
                                                                             middle)
        tiles = "".join(f"<figure>{_img(_shrink(tile, TILE_HEIGHT), names[layer])}"
                        f"<figcaption>{_e(names[layer])}</figcaption></figure>" for layer, tile in tiles.items())
        indices = frame_indices(num_frames, STRIP_FRAMES)
        frames = [_shrink(layers[Layer.BLENDED][t], STRIP_HEIGHT) for t in indices]
        separator = np.full((frames[0].shape[0], GAP, 3), 255, np.uint8)
        strip = np.concatenate([part for frame in frames for part in (frame, separator)][:-1], axis=1)
        pictures = (f'<div class="tiles">{tiles}</div><p class="muted">frame {middle} of {num_frames}</p>'
                    f'<figure class="strip">{_img(strip, "blended frames")}'
                    f"<figcaption>blended, frames {', '.join(map(str, indices))}</figcaption></figure>")
    fired = set(row[REJECT_REASONS])
    flagged = set(row[FLAGS])
    scores = []
    for score, description in SCORES.items():
        names = {rule.name for rule in policy.rule(score)}
        state = " bad" if names & fired else " warn" if names & flagged else ""
        state += " muted" if row[score] is None else ""
        scores.append(f'<span title="{_e(description)}">{_e(score)}</span>'
                      f'<span class="num{state}">{_fmt(row[score])}</span>')
    captions = "".join(
        f'<li><b>{layer.value}</b>: {_e(row[caption_column(layer)]) if row[caption_column(layer)] else "<i>none</i>"}'
        "</li>" for layer in CAPTIONED_LAYERS)
    decision = []
    if row[REJECT_REASONS]:
        decision.append(f"<li>reject reasons: {_codes(row['reject_reasons'], 'bad')}</li>")
    if row[FLAGS]:
        decision.append(f"<li>flags: {_codes(row['flags'], 'warn')}</li>")
    if row[DUPLICATE_OF]:
        decision.append(f"<li>duplicate of {_codes([row['duplicate_of']], '')}</li>")
    group = "kept" if row[KEEP] else "rejected"
    return (f'<article class="card {group}" data-sample-id="{_e(sample_id)}">'
            f'<h3 class="sample-id">{_e(sample_id)}</h3>'
            f'<p><span class="tag {group}">{group}</span> <span class="tag">{_e(row[KIND])}</span> '
            f'<span class="tag adapter">{_e(row[ADAPTER] or "unrecorded")}</span> '
            f'<span class="tag">{_e(row[SPLIT])}</span></p>'
            f'{pictures}<ul class="captions">{captions}</ul><ul class="decision">{"".join(decision)}</ul>'
            f'<div class="scores">{"".join(scores)}</div></article>')


def _codes(names: Sequence[str], css_class: str) -> str:
    return ", ".join(f'<code class="{css_class}">{_e(name)}</code>' for name in names)


def _gallery(group: str, title: str, cards: Sequence[str], total: int) -> str:
    shown = f"the first {len(cards)} of {total} by sample_id" if len(cards) < total else f"all {total}"
    content = f'<div class="cards">{"".join(cards)}</div>' if cards else f"<p>No {group} samples.</p>"
    return f'<section id="{group}"><h2>{title}</h2><p class="muted">{shown}</p>{content}</section>'


def _failures(failures: Sequence[Mapping], summary: dict) -> str:
    states = "".join(f"<tr><th>{_e(name)}</th><td class=num>{_e(count)}</td></tr>"
                     for name, count in _input_counts(summary.get("inputs", {})).items())
    if failures:
        rows = "".join(
            f"<tr><td>{_e(f['stage'])}</td><td><code>{_e(f['uri'])}</code></td><td>{_e(f['error_class'])}</td>"
            f"<td>{_e(f['message'])}</td><td>{_e(f['sample_id'] or '')}</td></tr>" for f in failures)
        table = ('<table class="failures"><tr><th>stage</th><th>input uri</th><th>error class</th><th>message</th>'
                 f"<th>sample</th></tr>{rows}</table>")
    else:
        table = "<p>No failures.</p>"
    return (f'<section id="failures"><h2>Failures</h2>{table}'
            f'<h3>Inputs by end state</h3><table class="inputs">{states}</table></section>')


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{css}</style></head>
<body>
{body}
</body></html>
"""

_CSS = """
body { font: 13px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; background: #f4f4f2;
       margin: 0 auto; padding: 16px 24px; max-width: 1500px; }
h1 { margin: 0 0 4px; font-size: 22px; } h2 { margin: 28px 0 8px; font-size: 18px; border-bottom: 1px solid #ccc; }
h3 { margin: 12px 0 4px; font-size: 14px; } .card h3 { margin-top: 0; }
nav a { color: #2a5d9f; }
code { font: 12px ui-monospace, Menlo, Consolas, monospace; }
table { border-collapse: collapse; background: #fff; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
.facts th { background: #eee; width: 90px; }
.funnel td:first-child { white-space: nowrap; }
.funnel tr.total td { background: #eee; }
td.num, span.num { text-align: right; font-variant-numeric: tabular-nums; }
.failures td { word-break: break-word; }
.good { color: #1b7a34; } .bad { color: #b3261e; } .warn { color: #a36200; } .muted { color: #888; }
pre { background: #fff; padding: 8px; max-height: 300px; overflow: auto; }
.hists { display: grid; grid-template-columns: repeat(auto-fill, minmax(350px, 1fr)); gap: 10px; }
figure { margin: 0; }
.hist { background: #fff; padding: 6px; border: 1px solid #ddd; }
.hist figcaption { font-size: 12px; min-height: 34px; }
.hist .under { font-size: 12px; }
svg.histogram { width: 100%; height: auto; }
svg.histogram text { font-size: 10px; fill: #444; }
svg.histogram .tick { stroke: #999; }
svg.histogram .plot { fill: #fafafa; stroke: #ccc; }
svg.histogram .bar { fill: #4a78a8; }
svg.histogram .fires { fill: #d33; opacity: 0.08; }
svg.histogram .threshold { stroke: #d11; stroke-width: 2; }
svg.histogram text.rule-label { fill: #d11; font-weight: 600; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(660px, 1fr)); gap: 12px; }
.card { background: #fff; border: 1px solid #ddd; border-top: 4px solid #1b7a34; padding: 8px 10px; }
.card.rejected { border-top-color: #b3261e; }
.card p { margin: 2px 0 6px; }
.tag { display: inline-block; padding: 0 6px; border-radius: 8px; background: #eee; font-size: 11px; }
.tag.kept { background: #d9f0de; color: #1b7a34; } .tag.rejected { background: #f7dcda; color: #b3261e; }
.tiles { display: grid; grid-template-columns: repeat(4, 1fr); gap: 6px; }
.tiles img { max-width: 100%; height: auto; }
.strip img { max-width: 100%; height: auto; }
.tiles figcaption, .strip figcaption { font-size: 11px; color: #666; }
.card img { display: block; image-rendering: auto; }
.captions, .decision { margin: 6px 0; padding-left: 18px; }
.scores { display: grid; grid-template-columns: repeat(3, auto 52px); column-gap: 8px; font-size: 11px; }
.scores span:nth-child(odd) { color: #555; overflow: hidden; text-overflow: ellipsis; }
"""
