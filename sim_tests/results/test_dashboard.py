"""The dashboard page: built from a synthetic history, rendered in headless Chromium."""
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from harness.results import dashboard
from harness.cli.commands import main
from harness.results.history import History, HistoryError, Row

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HOPS = {"link host->p0": 60, "board p0": 120, "link p0->p1": 40, "board p1": 90, "link p1->host": 50}
RUNS, STEP = 16, 11


def make_history(path: Path) -> None:
    rng = np.random.default_rng(1)
    rows = []
    for i in range(RUNS):
        t = f"2026-02-{i + 1:02d}T03:00:00+00:00"
        vals = {h: v * (1 + rng.normal(0, 0.01)) + (60 if (h == "board p1" and i >= STEP) else 0) for h, v in HOPS.items()}
        base = ("vrack", "m1", f"c{i:03d}", "plan0001")
        for h, v in vals.items():
            rows.append(Row(t, *base, "single breakdown p50", h, v, "us", "bench"))
            rows.append(Row(t, *base, "single p50", h, v, "us", "bench"))
        e2e = sum(vals.values())
        rows.append(Row(t, *base, "single p50", "e2e", e2e, "us", "bench"))
        rows.append(Row(t, *base, "single p99", "e2e", e2e * 1.3 + rng.normal(0, 3), "us", "bench"))
        rows.append(Row(t, *base, "cpu p50", "keras batch 1", 700 + rng.normal(0, 5), "us", "bench"))
    with History(path) as h:
        h.add(rows)


def test_page_content_and_self_containment(tmp_path):
    db = tmp_path / "r.sqlite"
    make_history(db)
    index, changes = dashboard.write(db, tmp_path / "site")
    page = index.read_text()
    # every run has a stacked bar with every hop; trend lines for p50 and p99; the CPU reference line
    assert len(re.findall(r'<rect class="bar"', page)) == RUNS * len(HOPS)
    assert len(re.findall(r'<polyline class="series"', page)) == 2
    assert page.count('class="reference"') == 1 and "CPU keras batch 1 p50" in page
    # the step at run STEP on board p1 is marked as a change line and listed as a regression in effect
    assert page.count('class="change"') >= 1
    assert re.search(rf"REGRESSION: single p50 at board p1: .* since run {STEP} ", page)
    assert {c.index for c in changes if c.key.hop == "board p1"} == {STEP}
    # nothing fetched: no external scripts, styles, images or fonts
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', page)
    assert "@import" not in page and "url(" not in page


def test_empty_or_missing_history_is_a_user_error(tmp_path, capsys):
    with pytest.raises(HistoryError, match="no results"):
        History(tmp_path / "e.sqlite").close()
        dashboard.write(tmp_path / "e.sqlite", tmp_path / "site")
    assert main(["dashboard", "--db", str(tmp_path / "nope.sqlite"), "-o", str(tmp_path / "s")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed: run scripts/setup-system.sh")
def test_renders_in_headless_chromium_without_console_errors(tmp_path):
    db = tmp_path / "r.sqlite"
    make_history(db)
    assert main(["dashboard", "--db", str(db), "-o", str(tmp_path / "site")]) == 0
    shot = tmp_path / "shot.png"
    profile = tmp_path / "profile"
    profile.mkdir()
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1100,1400",
                        "--enable-logging=stderr", "--v=0", (tmp_path / "site" / "index.html").as_uri()],
                       capture_output=True, text=True, timeout=120)
    console = [l for l in r.stderr.splitlines() if "CONSOLE" in l]
    # the page's own log line proves console capture works, and that both plots were in the DOM
    assert any('"splitrack dashboard: 2 plots of 2, ' in l for l in console), r.stderr[-3000:]
    # Chromium logs every console message (error, warning, uncaught exception) at INFO on stderr, so
    # the page must log nothing but its own line
    others = [l for l in console if '"splitrack dashboard: ' not in l]
    assert others == []
    import matplotlib.image as mpimg

    img = mpimg.imread(str(shot))[:, :, :3]
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000

    def pixels(hex_colour):
        rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)]) / 255
        return int((np.abs(img - rgb).max(axis=2) < 0.02).sum())

    # the plots drew: bars of the first and last hop colour, and the red change marker
    assert pixels(dashboard.COLOURS[0]) > 2000
    assert pixels(dashboard.COLOURS[4]) > 1000
    assert pixels("#dd0000") > 50


def test_imported_pytest_benchmark_runs_get_trend_and_breakdown(tmp_path):
    db = tmp_path / "r.sqlite"
    rows = []
    for i in range(4):
        base = (f"2026-03-0{i + 1}T00:00:00+00:00", "vrack", "m1", f"c{i}", "plan0002")
        rows.append(Row(*base, "pytest test_frame median", "e2e", 500.0 + i, "us", "pytest-benchmark"))
        for h, v in HOPS.items():
            rows.append(Row(*base, "pytest test_frame breakdown p50", h, v, "us", "pytest-benchmark"))
    with History(db) as h:
        h.add(rows)
    page = dashboard.write(db, tmp_path / "site")[0].read_text()
    assert "Where the time goes (pytest test_frame, critical path" in page
    assert len(re.findall(r'<rect class="bar"', page)) == 4 * len(HOPS)
    assert len(re.findall(r'<polyline class="series"', page)) == 1
