"""`splitrack nightly` end to end on a virtual rack: bench, history, regression check, dashboard.

Three ordinary nights exit 0; then a board gets slower (its agent takes 1 ms more per frame: a timing
model injected through the deployment, as a slower bitstream would) and the fourth night exits 1 naming
that board's hop."""
import json
import re
import sqlite3

import pytest

from harness.rack import deploy as deploy_mod
from harness.cli.commands import main


@pytest.fixture(scope="module")
def vrack(tmp_path_factory):
    from harness.rack.virtual_rack import rack_down, rack_up

    out = tmp_path_factory.mktemp("nightly") / "rack.toml"
    rack_up(3, out, state=out.parent / "state", name="nightly-ci", progress=lambda s: None)
    try:
        yield out
    finally:
        rack_down(out)


def test_nightly_end_to_end_then_injected_regression(vrack, tmp_path, monkeypatch, capsys):
    db, site = tmp_path / "results.sqlite", tmp_path / "site"
    args = ["nightly", "--boards", str(vrack), "--db", str(db), "-o", str(site), "--frames", "60"]
    for night in range(3):
        assert main(args) == 0, capsys.readouterr().out[-3000:]
        out = capsys.readouterr().out
        assert "nightly: no regression in effect" in out
    assert (site / "index.html").is_file() and len(list((site / "runs").glob("*.json"))) == 3
    doc = json.loads(sorted((site / "runs").glob("*.json"))[-1].read_text())
    # the CPU reference was measured in the same run, and the rack answers like Keras on the labelled digits
    assert set(doc["cpu"]) == {"keras batch 1", "keras batch 8", "hls4ml emulation"}
    assert all(s["p50"] > 0 for s in doc["cpu"].values())
    assert doc["accuracy"]["rack"] > 0.9 and doc["accuracy"]["rack agrees with keras"] > 0.95
    assert abs(doc["accuracy"]["rack"] - doc["accuracy"]["keras"]) < 0.02
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT COUNT(DISTINCT time) FROM measurements").fetchone()[0] == 3
        hops = {r[0] for r in c.execute("SELECT DISTINCT hop FROM measurements WHERE metric='single p50'")}
    assert {"e2e", "board s1", "link s0->s1", "link host->s0", "link s2->host"} <= hops

    real_timing = deploy_mod._timing

    def slower_s1(plan, name, board):
        return {"cycles": 100_000, "clock_mhz": 100.0} if name == "s1" else real_timing(plan, name, board)

    monkeypatch.setattr(deploy_mod, "_timing", slower_s1)
    assert main(args) == 1
    out = capsys.readouterr().out
    flagged = re.findall(r"REGRESSION: (single p50|single breakdown p50|stream p50|stream throughput) at ([^:]+):", out)
    assert ("single p50", "board s1") in flagged, out[-3000:]
    assert re.search(r"REGRESSION: single p50 at board s1: .* since run 3 ", out)
    assert "at board s1" in out.splitlines()[-1] or "board s1" in out.splitlines()[-1]
    page = (site / "index.html").read_text()
    assert "Regressions in effect" in page and "board s1" in page
