"""Redraw docs/dashboard-index.png, docs/dashboard-run.png and docs/dashboard-compare.png (the README's screenshots)
from the test
history of sim_tests/results/test_dashboard.py (9 runs, board s1 1 ms slower from the 8th, the 5th incomplete).

    .venv/bin/python scripts/dashboard_screenshots.py      # needs chromium (scripts/setup-system.sh)
"""
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "sim_tests")]

from PIL import Image  # noqa: E402 (matplotlib's dependency)
from synthetic_history import make_history  # noqa: E402

from harness.results import dashboard  # noqa: E402


def main() -> int:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_history(tmp / "h.sqlite", runs=9, slow_at=7, incomplete_at=4)
        dashboard.write(tmp / "h.sqlite", tmp / "site")
        for page, name, height in (("index.html", "dashboard-index.png", 2300), ("runs/8.html", "dashboard-run.png", 1900),
                                   ("runs/8-vs-7.html", "dashboard-compare.png", 1000)):
            shot = tmp / name
            subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                            "--disable-background-networking", f"--user-data-dir={tmp / 'profile'}",
                            f"--screenshot={shot}", f"--window-size=1200,{height}", "--virtual-time-budget=5000",
                            (tmp / "site" / page).as_uri()], check=True, capture_output=True, timeout=180)
            img = Image.open(shot).convert("RGB")
            img = img.resize((img.width * 3 // 4, img.height * 3 // 4), Image.LANCZOS)
            out = ROOT / "docs" / name
            out.parent.mkdir(exist_ok=True)
            img.quantize(colors=64).save(out, optimize=True)
            print(f"{out} ({out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
