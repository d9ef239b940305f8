"""Open a report from disk in headless Chromium (Debian's ``chromium``, installed by ``make test``) and read the DOM back.

A small script is injected into a copy of the page: after the load event it writes into <body> how many
images the page has and how many decoded (``complete`` and ``naturalWidth > 0``); ``--dump-dom`` prints the result.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make test installs Debian's chromium)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--virtual-time-budget=10000"]
PROBE = ("<script>window.addEventListener('load',function(){var a=[].slice.call(document.images);"
         "document.body.setAttribute('data-images',a.length);"
         "document.body.setAttribute('data-loaded',a.filter(function(i){return i.complete&&i.naturalWidth>0;}).length);});</script>")


def open_in_chromium(report: Path) -> tuple[str, int, int]:
    """(DOM after load, number of images, number of images that loaded) of ``report`` opened from disk."""
    with tempfile.TemporaryDirectory() as folder:
        page = Path(folder) / "page.html"
        page.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
        result = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={folder}/profile", "--dump-dom", page.as_uri()],
                                capture_output=True, text=True, timeout=120)
    dom = result.stdout
    found = re.search(r'<body[^>]*data-images="(\d+)"[^>]*data-loaded="(\d+)"', dom)
    assert found, f"chromium did not run the page's load handler (rc {result.returncode}): {result.stderr[-800:]}"
    return dom, int(found.group(1)), int(found.group(2))
