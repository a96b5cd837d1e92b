"""Open a gallery page in headless Chromium (Debian's ``chromium`` package: ``apt-get install -y chromium``), as a
user's browser would from disk: print the DOM after its script ran, and optionally take a screenshot.

    python tools/gallery_browser.py GALLERY.html [--dom OUT.html] [--screenshot OUT.png] [--size 1280,860]

No network: the page is opened as a file:// URL with Chromium's background networking, sync, component updates
and QUIC switched off; the profile is a throwaway folder."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=5000",  # let the page's script run before the DOM is read
)


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def run_browser(page: Path, *args: str, timeout: int = 120) -> str:
    """Chromium's stdout for ``page`` with ``args`` (``--dump-dom``, ``--screenshot=...``)."""
    browser = find_browser()
    if browser is None:
        raise FileNotFoundError(f"no headless browser found (tried {', '.join(BROWSERS)}); apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="gallery-chromium-") as profile:
        done = subprocess.run(
            [browser, *FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    if done.returncode != 0:
        raise RuntimeError(f"{browser} exited with {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("page", type=Path, help="a gallery HTML file")
    parser.add_argument("--dom", type=Path, help="write the rendered DOM here (default: stdout)")
    parser.add_argument("--screenshot", type=Path, help="write a PNG screenshot here")
    parser.add_argument("--size", default="1280,860", help="window size for the screenshot: WIDTH,HEIGHT")
    args = parser.parse_args()
    if not args.page.is_file():
        parser.error(f"{args.page}: no such file")
    dom = run_browser(args.page, "--dump-dom")
    if args.dom:
        args.dom.write_text(dom, encoding="utf-8")
    else:
        sys.stdout.write(dom)
    if args.screenshot:
        run_browser(args.page, f"--screenshot={args.screenshot.resolve()}", f"--window-size={args.size}")
        print(f"screenshot: {args.screenshot} ({args.screenshot.stat().st_size / 1024:.0f} KiB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
