"""The history database: importing bench JSON and real pytest-benchmark JSON, series, the CLI."""
import json
import subprocess
import sys

import pytest

from harness import history
from harness.cli import main
from harness.history import History, SeriesKey


def bench_doc(time, commit, e2e_p50, link_p50=40.0, plan="plan0001"):
    stats = lambda p50: {"p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.3, "max": p50 * 2, "mean": p50, "jitter": 1.0, "n": 100}
    return {
        "kind": history.BENCH_KIND, "version": 1, "time": time, "rack": "vrack", "machine": "m1", "commit": commit,
        "plan_hash": plan,
        "reports": {"single": {"mode": "single", "frames": 100, "throughput_hz": 900.0, "hops": ["link host->p0"],
                               "stats": {"e2e": stats(e2e_p50), "link host->p0": stats(link_p50)},
                               "breakdown_p50_us": {"link host->p0": link_p50}}},
        "cpu": {"keras batch 1": {"p50": 900.0, "p99": 1500.0}},
        "accuracy": {"rack": 0.95, "keras": 0.96},
    }


def test_bench_rows_and_series(tmp_path):
    db = tmp_path / "h.sqlite"
    with History(db) as h:
        assert h.add(history.rows_from_bench(bench_doc("2026-01-01T00:00:00+00:00", "aaa", 100.0))) > 10
        h.add(history.rows_from_bench(bench_doc("2026-01-02T00:00:00+00:00", "bbb", 120.0)))
        # the same file twice adds nothing
        assert h.add(history.rows_from_bench(bench_doc("2026-01-02T00:00:00+00:00", "bbb", 120.0))) == 0
        s = h.series(SeriesKey("vrack", "m1", "plan0001", "single p50", "e2e"))
        assert [p.value for p in s] == [100.0, 120.0] and [p.commit_id for p in s] == ["aaa", "bbb"]
        assert [p.value for p in h.series(SeriesKey("vrack", "m1", "plan0001", "cpu p50", "keras batch 1"))] == [900.0] * 2
        assert len(h.runs()) == 2
        # one row per (rack, machine, commit, plan hash, metric, hop, time)
        n = h.db.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]
        distinct = h.db.execute("SELECT COUNT(*) FROM (SELECT DISTINCT rack, machine, commit_id, plan_hash, metric, hop, time "
                                "FROM measurements)").fetchone()[0]
        assert n == distinct


def test_import_real_pytest_benchmark_json(tmp_path):
    (tmp_path / "test_b.py").write_text(
        "def test_hop(benchmark):\n"
        "    benchmark.extra_info['plan_hash'] = 'p123'\n"
        "    benchmark.extra_info['rack'] = 'vrack'\n"
        "    benchmark.extra_info['hops'] = {'link host->p0': {'p50': 12.5, 'p99': 20.0}, 'board p0': {'p50': 3.0}}\n"
        "    benchmark(sum, range(1000))\n")
    out = tmp_path / "out.json"
    # not as an xdist worker: pytest-benchmark sees PYTEST_XDIST_WORKER (inherited under `pytest -n`) and
    # disables itself, writing no JSON
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("PYTEST_XDIST")}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_b.py"),
                        f"--benchmark-json={out}"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = history.rows_from_file(out)
    by = {(r.metric, r.hop): r for r in rows}
    med = json.loads(out.read_text())["benchmarks"][0]["stats"]["median"]
    assert by[("pytest test_hop median", "e2e")].value == pytest.approx(med * 1e6)
    assert by[("pytest test_hop p50", "link host->p0")].value == 12.5
    assert by[("pytest test_hop p99", "link host->p0")].value == 20.0
    assert {r.plan_hash for r in rows} == {"p123"} and {r.rack for r in rows} == {"vrack"}


def test_cli_add_and_list(tmp_path, capsys):
    f = tmp_path / "b.json"
    f.write_text(json.dumps(bench_doc("2026-01-01T00:00:00+00:00", "abc", 100.0)))
    db = tmp_path / "r.sqlite"
    assert main(["history", "add", str(f), "--db", str(db)]) == 0
    assert main(["history", "list", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "new ->" in out and "abc" in out and "plan0001" in out


def test_bad_inputs_are_one_line_user_errors(tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text('{"hello": 1}')
    assert main(["history", "add", str(bad), "--db", str(tmp_path / "r.sqlite")]) == 2
    assert "neither" in capsys.readouterr().err
    assert main(["history", "add", str(tmp_path / "missing.json"), "--db", str(tmp_path / "r.sqlite")]) == 2
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(history.HistoryError, match="not a splitrack history"):
        History(junk)
    truncated = tmp_path / "t.json"
    doc = bench_doc("2026-01-01T00:00:00+00:00", "abc", 1.0)
    del doc["reports"]["single"]["breakdown_p50_us"]
    truncated.write_text(json.dumps(doc))
    with pytest.raises(history.HistoryError, match="breakdown_p50_us"):
        history.rows_from_file(truncated)
