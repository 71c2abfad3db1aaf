"""Screenshot a report (or any local HTML file) with headless Chromium, to check that it renders offline.

Usage: `python docs/screenshot_report.py REPORT.html OUT.png [--width 1400 --height 3000]`
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
TIMEOUT_S = 120


class ScreenshotError(RuntimeError):
    """No browser, or the browser produced no PNG."""


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def screenshot(html: Path, png: Path, width: int = 1400, height: int = 3000) -> Path:
    """Render `html` at `width` x `height` CSS pixels into `png`; the top of the page, cropped to the window."""
    browser = find_browser()
    if browser is None:
        raise ScreenshotError(f"no headless browser found (looked for {', '.join(BROWSERS)} on PATH)")
    html, png = Path(html).resolve(), Path(png).resolve()
    if not html.is_file():
        raise ScreenshotError(f"{html} is not a file")
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)  # a PNG left from an earlier run must not pass for this one
    # A throwaway profile: two screenshots at once must not fight over the default profile's lock.
    with tempfile.TemporaryDirectory(prefix="layerflow-chromium-") as profile:
        command = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                   f"--user-data-dir={profile}", f"--window-size={width},{height}", f"--screenshot={png}",
                   html.as_uri()]
        result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    if not png.is_file() or png.stat().st_size == 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise ScreenshotError(f"{browser} wrote no screenshot (exit {result.returncode}):\n{tail}")
    return png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path, help="the HTML file to render")
    parser.add_argument("png", type=Path, help="the PNG to write")
    parser.add_argument("--width", type=int, default=1400, help="window width in CSS pixels")
    parser.add_argument("--height", type=int, default=3000, help="window height in CSS pixels")
    args = parser.parse_args(argv)
    try:
        path = screenshot(args.html, args.png, args.width, args.height)
    except (ScreenshotError, subprocess.TimeoutExpired) as exc:
        print(f"screenshot failed: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
