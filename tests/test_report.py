"""``vlprop report``: a self-contained review page (parsed always; rendered in headless Chromium when installed)."""
from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from vlprop.cli import main
from vlprop.io.masks import write_mask
from vlprop.io.report import write_confidence_csv

T = 6
LOWEST = 4


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.stack: list[str] = []
        self.sections: list[str] = []
        self.review_ids: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "section":
            self.sections.append(a.get("id"))
        if tag == "figure" and self.sections and self.sections[-1] == "review":
            self.review_ids.append(a.get("id"))


@pytest.fixture
def run(tmp_path):
    """A run folder as `vlprop propagate` writes it, with known confidences (frame 4 lowest, then frame 2)."""
    frames, run = tmp_path / "frames", tmp_path / "run"
    frames.mkdir()
    conf = {0: 1.0, 1: 0.9, 2: 0.3, 3: 0.8, 4: 0.1, 5: 0.7}
    rows = []
    for t in range(T):
        img = np.zeros((60, 80, 3), np.uint8)
        img[..., 1] = 40 * t
        Image.fromarray(img).save(frames / f"{t:05d}.png")
        m = np.zeros((60, 80), np.uint8)
        m[10:30, 10 + 5 * t:30 + 5 * t] = 1
        m[40:55, 50:70] = 2
        write_mask(run / f"{t:05d}.png", m)
        for obj in (1, 2):
            c = conf[t] if obj == 1 else 0.95
            rows.append({"frame_index": t, "frame": f"{t:05d}", "object_id": obj, "confidence": c, "sharpness": c,
                         "stability": 1.0, "area": int((m == obj).sum()), "annotated": int(t == 0)})
    write_confidence_csv(run / "confidence.csv", rows)
    (run / "protocol.json").write_text(json.dumps({"source": str(frames), "backbone": "resnet18",
                                                   "weights": {"description": "random seed 0"},
                                                   "preset": {"name": "crw"}, "direction": "forward"}))
    return run


def test_report_is_one_self_contained_html_with_plot_thumbnails_and_low_frames_first(run, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", str(run), "--out", str(out), "--below", "0.5"]) == 0
    html = out.read_text()
    p = _Collect()
    p.feed(html)
    assert p.sections == ["timeline", "summary", "review", "all-frames", "protocol"]
    svg = [a for t, a in p.tags if t == "svg"]
    assert svg and svg[0]["id"] == "confidence-plot"
    lines = [a for t, a in p.tags if t == "polyline"]
    assert sorted(a["class"] for a in lines) == ["object-1", "object-2"]
    assert len(lines[0]["points"].split()) == T
    imgs = [a["src"] for t, a in p.tags if t == "img"]
    assert len(imgs) == T + 2  # every frame + the two below 0.5 in the review list
    assert all(s.startswith("data:image/jpeg;base64,") for s in imgs)
    assert p.review_ids == [f"frame-{LOWEST}", "frame-2"]  # lowest confidence first
    for t, a in p.tags:  # nothing is fetched from the network
        for k in ("src", "href"):
            assert not str(a.get(k, "")).startswith(("http:", "https:", "//")), (t, a)
    assert '"name": "crw"' in html
    assert main(["report", str(run), "--out", str(out)]) == 2  # exists: refused without --force
    assert main(["report", str(run), "--out", str(run / "r.html")]) == 2  # inside the run


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_report_renders_in_a_headless_browser(run, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium on PATH (apt-get install chromium) to render the report")
    out = tmp_path / "report.html"
    assert main(["report", str(run), "--out", str(out), "--below", "0.5"]) == 0
    shot = tmp_path / "shot.png"
    res = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          "--window-size=1000,1400", f"--screenshot={shot}", out.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert shot.is_file(), res.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    # object 1's line is drawn in DAVIS colour 1, (128, 0, 0): it must be on screen where the plot is (top)
    red = (np.abs(img - [128, 0, 0]).sum(-1) < 60)
    ys, xs = np.nonzero(red)
    assert red.sum() > 200, red.sum()
    assert ys.min() < 400
    # the thumbnails are drawn: the green ramp of the frames appears in the page
    green = (img[..., 1] > 150) & (img[..., 0] < 90) & (img[..., 2] < 90)
    assert green.sum() > 500, green.sum()
