"""The HTML report and the sample previews, on one tiny dataset with a rejected sample and a failed input."""

from __future__ import annotations

import importlib.util
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import write_layered, write_rgba, write_video
from PIL import Image

from datagen.build import build
from datagen.config import BuildConfig
from datagen.pipeline import LocalRunner
from filters.apply import read_policy
from filters.report import write_report
from manifests import io
from manifests.layers import Layer
from manifests.preview import (
    GAP,
    LABEL_HEIGHT,
    LABEL_WIDTH,
    checkerboard,
    contact_sheet,
    over_checkerboard,
    write_preview,
)
from manifests.schema import SCORES

VOID = {"img", "br", "meta", "link", "hr", "input", "source", "wbr"}


class Page(HTMLParser):
    """Every element (tag, attributes) and every text chunk with the classes of the elements around it."""

    def __init__(self, text: str):
        super().__init__()
        self.elements: list[tuple[str, dict]] = []
        self.texts: list[tuple[frozenset[str], str]] = []
        self._open: list[tuple[str, set[str]]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.elements.append((tag, attributes))
        if tag not in VOID:
            self._open.append((tag, set((attributes.get("class") or "").split())))

    def handle_startendtag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        while self._open and self._open.pop()[0] != tag:
            pass

    def handle_data(self, data):
        self.texts.append((frozenset(c for _, classes in self._open for c in classes), data))

    def find(self, tag: str, css_class: str | None = None) -> list[dict]:
        return [a for t, a in self.elements
                if t == tag and (css_class is None or css_class in (a.get("class") or "").split())]

    def text(self, css_class: str) -> str:
        """All text inside elements of `css_class`."""
        return "".join(data for classes, data in self.texts if css_class in classes)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Four copy-paste samples, a kept frozen sample, a rejected one (empty matte) and a failed input."""
    tmp = tmp_path_factory.mktemp("report")
    src = tmp / "src"
    write_video(src / "fg_a.mp4", seed=1)
    (src / "fg_a.json").write_text(json.dumps({"foreground": "a red <disk> & co"}))  # needs escaping
    write_video(src / "fg_b.mp4", seed=2)
    write_video(src / "plates" / "bg_c.mp4", seed=3)
    (src / "plates" / "bg_c.json").write_text(json.dumps({"role": "background", "background": "a wall"}))
    write_layered(src / "layered" / "one", seed=4, captions={"foreground": "a coin", "background": "grass"})
    write_layered(src / "layered" / "clear", seed=5)
    write_rgba(src / "layered" / "clear" / "foreground.png", 64, 96, alpha_value=0.0)
    (src / "zero.mp4").write_bytes(b"")
    config = BuildConfig(frames=4, fps=8.0, size=(32, 48), matting="auto", seed=0, clip="none")
    out = tmp / "ds"
    build(str(src), out, config, LocalRunner(progress=False))
    return out


@pytest.fixture(scope="module")
def rows(dataset) -> list[dict]:
    return io.read_manifest(dataset).sort_by("sample_id").to_pylist()


@pytest.fixture(scope="module")
def report(dataset) -> Path:
    return write_report(dataset)


@pytest.fixture(scope="module")
def page(report) -> Page:
    return Page(report.read_text(encoding="utf-8"))


def test_the_dataset_has_kept_and_rejected_samples_and_a_failure(rows, dataset):
    assert any(row["keep"] for row in rows) and any(not row["keep"] for row in rows)
    assert io.read_failures(dataset).num_rows >= 1


def test_the_report_is_written_beside_the_dataset_by_default(report, dataset):
    assert report == dataset / "report.html" and report.stat().st_size > 0


def test_the_report_is_self_contained(page, report):
    images = page.find("img")
    assert images and all(a["src"].startswith("data:image/") for a in images)
    links = [value for _, attributes in page.elements for key, value in attributes.items() if key in ("src", "href")]
    assert not [value for value in links if "http://" in value or "https://" in value]
    assert not [a for a in page.find("script") if "src" in a]
    assert not page.find("link")
    assert "@import" not in report.read_text(encoding="utf-8")


def in_turn(rows: list[dict]) -> list[str]:
    """Sample ids one of each kind in turn (kinds by name, each kind's by sample_id): the gallery's order."""
    by_kind: dict[str, list[str]] = {}
    for row in rows:
        by_kind.setdefault(row["kind"], []).append(row["sample_id"])
    queues = [by_kind[kind] for kind in sorted(by_kind)]
    return [queue[turn] for turn in range(max(map(len, queues), default=0)) for queue in queues if turn < len(queue)]


def test_the_gallery_shows_every_kept_and_rejected_sample_the_kinds_in_turn(page, rows):
    for group, keep in (("kept", True), ("rejected", False)):
        expected = in_turn([row for row in rows if row["keep"] == keep])[:24]
        cards = [a["data-sample-id"] for a in page.find("article", group)]
        assert cards == expected
    titles = [data for classes, data in page.texts if "sample-id" in classes]
    assert titles == in_turn([row for row in rows if row["keep"]]) + in_turn([r for r in rows if not r["keep"]])


def test_a_rejected_card_names_its_reason(page, rows):
    [rejected] = [row for row in rows if not row["keep"]]
    assert "alpha_coverage_max<0.002" in rejected["reject_reasons"]
    assert all(reason in page.text("decision") for reason in rejected["reject_reasons"])


def test_captions_are_escaped(report, page):
    text = report.read_text(encoding="utf-8")
    assert "a red <disk>" not in text and "a red &lt;disk&gt; &amp; co" in text
    assert "a red <disk> & co" in page.text("captions")


def test_the_funnel_has_one_row_per_rule(page, dataset):
    policy = read_policy(dataset)
    expected = [rule.name for rule in policy.rules] + ([policy.duplicate_rule] if policy.duplicate_rule else [])
    assert len(page.find("tr", "rule")) == len(expected)
    assert [data for classes, data in page.texts if "rule-name" in classes] == expected


def test_each_scored_column_has_a_histogram_with_its_thresholds(page, rows, dataset):
    policy = read_policy(dataset)
    scored = [score for score in SCORES if any(row[score] is not None for row in rows)]
    assert "recompose_psnr" in scored and "alpha_coverage_max" in scored
    assert [a["data-score"] for a in page.find("svg", "histogram")] == scored
    lines = [a["data-rule"] for a in page.find("line", "threshold")]
    assert lines == [rule.name for score in scored for rule in policy.rule(score)]


def test_all_null_scores_are_listed_with_their_reason(page, rows, dataset):
    empty = [score for score in SCORES if all(row[score] is None for row in rows)]
    assert empty == [score for score in SCORES if score.startswith("clip_")]  # the build ran with clip="none"
    listed = page.text("all-null")
    assert all(score in listed for score in empty)
    assert io.read_summary(dataset)["unscored"]["clip_text_blended"]["why"] in listed


def test_the_failures_table_lists_each_failure(page, dataset):
    failures = io.read_failures(dataset).to_pylist()
    assert "empty file (0 bytes)" in [f["message"] for f in failures]
    table = page.text("failures")
    assert all(f["message"] in table and f["uri"] in table for f in failures)


def test_gallery_limits_the_cards(dataset, tmp_path):
    page = Page(write_report(dataset, tmp_path / "one.html", gallery=1).read_text(encoding="utf-8"))
    assert len(page.find("article", "kept")) == 1 and len(page.find("article", "rejected")) == 1


def test_a_dataset_with_no_samples_still_renders(tmp_path):
    (tmp_path / "_summary.json").write_text("{}")
    page = Page(write_report(tmp_path).read_text(encoding="utf-8"))
    assert not page.find("article") and not page.find("svg", "histogram") and not page.find("img")
    assert all(score in page.text("all-null") for score in SCORES)
    assert "No failures." in "".join(data for _, data in page.texts)


def test_over_checkerboard_shows_the_board_where_transparent():
    foreground = np.full((16, 16, 3), 255, np.uint8)
    alpha = np.zeros((16, 16), np.uint8)
    alpha[:, 8:] = 255
    out = over_checkerboard(foreground, alpha)
    assert np.array_equal(out[:, :8], checkerboard(16, 16)[:, :8])
    assert (out[:, 8:] == 255).all()
    assert len(np.unique(checkerboard(16, 16))) == 2


def test_contact_sheet_has_four_rows_and_the_asked_columns(dataset, rows):
    layers = io.read_layers(dataset, rows[0]["sample_id"])
    assert layers[Layer.ALPHA].shape == (4, 32, 48)
    sheet = contact_sheet(layers, frames=3)
    assert sheet.size == (LABEL_WIDTH + 3 * (48 + GAP), LABEL_HEIGHT + 4 * (32 + GAP)) == (222, 150)
    assert contact_sheet(layers, frames=10).width == LABEL_WIDTH + 4 * (48 + GAP)  # no more columns than frames


@pytest.mark.parametrize("animation_format", ["gif", "webp"])
def test_preview_writes_a_sheet_and_an_animation_of_every_frame(dataset, rows, tmp_path, animation_format):
    video = next(row for row in rows if row["kind"] == "video_copy_paste")  # frozen frames would be merged
    sheet, animation = write_preview(dataset, video["sample_id"], tmp_path, frames=4,
                                     animation_format=animation_format)
    assert sheet == tmp_path / f"{video['sample_id']}_sheet.png"
    assert Image.open(sheet).size == (LABEL_WIDTH + 4 * (48 + GAP), LABEL_HEIGHT + 4 * (32 + GAP))
    assert animation.suffix == f".{animation_format}"
    with Image.open(animation) as image:
        assert image.n_frames == video["num_frames"] == 4
        assert image.size == (4 * 48 + 3 * GAP, 32)
        image.seek(1)
        image.load()  # WebP reads a frame's duration only when it decodes the frame
        assert abs(image.info["duration"] - 125) <= 5  # 8 fps; GIF stores hundredths of a second


def test_preview_of_an_unknown_sample_names_some_that_exist(dataset, rows, tmp_path):
    with pytest.raises(io.DatasetError, match=rows[0]["sample_id"]):
        write_preview(dataset, "no-such-sample", tmp_path)


def _screenshot_module():
    path = Path(__file__).resolve().parents[1] / "docs" / "screenshot_report.py"
    spec = importlib.util.spec_from_file_location("screenshot_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_report_renders_in_headless_chromium(report, tmp_path):
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not on PATH: cannot check that the report renders")
    png = _screenshot_module().screenshot(report, tmp_path / "report.png", width=900, height=1400)
    with Image.open(png) as image:
        assert image.size == (900, 1400)
        assert np.asarray(image.convert("L"), np.float32).std() > 10.0  # not a blank page
