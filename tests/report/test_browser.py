"""The report in a real browser: headless Chromium (Debian's ``chromium``) renders it offline.

Checks: the screenshot is not blank (pixel variety, and the verdict colours are on the
page), the rendered DOM holds every recipe and task of the sweep, the HTML names no
external URL, and Chromium's own network log shows no request made by the page. Chromium
itself contacts a few Google service hosts in the background even with background
networking disabled; those are the browser's, not the page's, and all name resolution
is mapped to "not found" so nothing leaves the machine. A canary page with one remote
image proves that the log check sees a page's request.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run installs it)"
)

REQUEST = re.compile(r"NotifyBeforeURLRequest: (\S+)")
# Chromium's own background services (time, component update, account sign-in), not the page's.
BROWSER_HOSTS = re.compile(r"^https?://([a-z0-9-]+\.)*(google\.com|googleapis\.com|gvt1\.com|gstatic\.com)[/:]")
EXTERNAL = re.compile(r"(?:https?|ftp|wss?)://", re.IGNORECASE)


def _chromium(tmp_path, page, *mode) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--enable-logging=stderr",
        "--v=1",
        "--window-size=1400,2000",
        *mode,
        page.resolve().as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def _page_requests(log: str) -> list[str]:
    return [url for url in REQUEST.findall(log) if not BROWSER_HOSTS.match(url) and not url.startswith("file:")]


def test_the_network_log_check_sees_a_page_request(tmp_path):
    canary = tmp_path / "canary.html"
    canary.write_text('<html><body><img src="http://quantsweep-canary.invalid/pixel.png"><p>canary</p></body></html>')
    result = _chromium(tmp_path, canary, "--dump-dom")
    assert "canary" in result.stdout
    assert _page_requests(result.stderr) == ["http://quantsweep-canary.invalid/pixel.png"]


@pytest.mark.slow
def test_report_renders_offline_in_headless_chromium(toy_sweep, tmp_path):
    import matplotlib.image

    import quantsweep
    from quantsweep.report.frames import load_records

    report = quantsweep.report(toy_sweep, tmp_path / "report.html")
    html = report.read_text()
    assert not EXTERNAL.search(html), EXTERNAL.search(html)

    shot = tmp_path / "shot.png"
    rendered = _chromium(tmp_path, report, f"--screenshot={shot}")
    pixels = (matplotlib.image.imread(shot)[..., :3] * 255).round().astype(int)
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 50  # text, table borders, figures: not a blank page
    assert np.mean(np.any(pixels < 240, axis=-1)) > 0.05  # more than 5% of the page is not white
    lossless_green = np.all(np.abs(pixels - [0x1A, 0x98, 0x50]) <= 2, axis=-1)
    assert lossless_green.sum() > 500  # the verdict map's cells are painted (w8-rtn is lossless)
    assert _page_requests(rendered.stderr) == []

    dom = _chromium(tmp_path, report, "--dump-dom")
    records = load_records(toy_sweep)
    for name in {r["recipe"] for r in records} | {r["task"] for r in records}:
        assert f">{name}<" in dom.stdout, name
    assert "Verdict map" in dom.stdout and "Record of the run" in dom.stdout
    assert _page_requests(dom.stderr) == []


@pytest.mark.slow
def test_two_models_are_side_by_side_in_the_rendered_report(two_model_sweep, tmp_path):
    """toy fp32 and toy bf16 as two models: each one's values are in its own map in Chromium's DOM."""
    import base64
    import io
    import json

    import matplotlib.image

    import quantsweep
    from quantsweep.report.html import _format_value
    from quantsweep.report.text import format_table

    report = quantsweep.report(two_model_sweep, tmp_path / "report.html")
    dom = _chromium(tmp_path, report, "--dump-dom").stdout
    records = [json.loads(line) for line in (two_model_sweep / "results.jsonl").read_text().splitlines()]
    primary = [r for r in records if r["primary"]]
    assert {r["model"] for r in primary} == {"toy-fp32", "toy-bf16"}
    for model in ("toy-fp32", "toy-bf16"):
        section = re.search(rf'<section class="view" id="view-\d+" data-model="{model}">(.*?)</section>', dom, re.S)
        assert section, model
        cells = re.findall(r'<td class="cell v-([a-z-]+)".*?<div class="value">([^<]*)</div>', section.group(1), re.S)
        expected = sorted(
            (r["verdict"], _format_value(float(r["value"]) if r["value"] is not None else None))
            for r in primary
            if r["model"] == model
        )
        assert sorted(cells) == expected, model  # every value of this model, in this model's map
        assert f"model {model}" in section.group(1)
    # the new figure: retained margin against bits per weight, one line per model, per family
    figures = re.findall(
        r'<img alt="retained margin against bits per weight by model, ([^"]+)" src="data:image/png;base64,([^"]+)"', dom
    )
    assert sorted(family for family, _ in figures) == sorted({r["family"] for r in primary})
    for _, data in figures:
        pixels = matplotlib.image.imread(io.BytesIO(base64.b64decode(data)), format="png")
        assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 20  # drawn, not blank
    text = format_table(records)
    assert "model toy-fp32" in text and "model toy-bf16" in text
    summary = json.loads((two_model_sweep / "summary.json").read_text())
    assert set(summary["models"]) == {"toy-fp32", "toy-bf16"}
    for views in summary["models"].values():
        (view,) = views.values()
        assert set(view["by_recipe"]) == {"w8-rtn", "w1-rtn"}
    assert _page_requests(_chromium(tmp_path, report, "--dump-dom").stderr) == []
