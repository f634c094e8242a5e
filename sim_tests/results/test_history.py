"""The history database: importing bench JSON and real pytest-benchmark JSON, series, the CLI."""
import json
import subprocess
import sys

import numpy as np
import pytest

from harness.results import history
from harness.cli.commands import main
from harness.results.history import History, SeriesKey


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
        s = h.series(SeriesKey("plan0001", "", "vrack", "single p50", "e2e"))
        assert [p.value for p in s] == [100.0, 120.0] and [p.commit_id for p in s] == ["aaa", "bbb"]
        assert [p.value for p in h.series(SeriesKey("plan0001", "", "vrack", "cpu p50", "keras batch 1"))] == [900.0] * 2
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
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_b.py"),
                        f"--benchmark-json={out}"], cwd=tmp_path, capture_output=True, text=True,
                       env=__import__("child_env").child_env())
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
    assert "run 1 'plan0001'" in out and " new, " in out and "abc" in out and "plan0001" in out
    assert "time (UTC)" in out and "2026-01-01 00:00:00Z" in out  # whole seconds, its zone said


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


# --- schema, integrity, runs with context, compare, ack, export ----------------------------------------
import sqlite3  # noqa: E402

from synthetic_history import bench_doc as synth_doc, make_history  # noqa: E402


def test_foreign_sqlite_file_is_refused_untouched(tmp_path, capsys):
    other = tmp_path / "app.sqlite"
    with sqlite3.connect(other) as c:
        c.execute("CREATE TABLE users (name TEXT)")
        c.execute("INSERT INTO users VALUES ('ann')")
    c.close()
    before = other.read_bytes()
    for action in (["list"], ["check"], ["add", str(tmp_path / "x.json")]):
        assert main(["history", *action, "--db", str(other)]) == 2
        assert "another program" in capsys.readouterr().err
    assert other.read_bytes() == before  # no schema written into it


def test_damaged_database_exits_2_for_check_and_list(tmp_path, capsys):
    db = tmp_path / "h.sqlite"
    make_history(db, runs=4)
    with sqlite3.connect(db) as c:
        page = c.execute("PRAGMA page_size").fetchone()[0]
        root = c.execute("SELECT rootpage FROM sqlite_master WHERE name = 'measurements'").fetchone()[0]
    c.close()
    raw = bytearray(db.read_bytes())
    start = (root - 1) * page
    raw[start + 8: start + page] = bytes(range(256)) * ((page - 8) // 256) + b"\x00" * ((page - 8) % 256)
    db.write_bytes(bytes(raw))
    for action in ("check", "list"):
        assert main(["history", action, "--db", str(db)]) == 2
        err = capsys.readouterr().err
        assert "damaged" in err and err.count("\n") == 1


def test_version_1_history_is_migrated(tmp_path):
    db = tmp_path / "old.sqlite"
    with sqlite3.connect(db) as c:
        c.executescript(history.SCHEMA_V1)
        c.executemany("INSERT INTO measurements VALUES (?,?,?,?,?,?,?,?,?,?)",
                      [(f"2026-01-0{i + 1}T00:00:00+00:00", "vrack", "m1", f"c{i}", "p1", "single p50", "e2e",
                        100.0 + i, "us", "bench") for i in range(3)])
    c.close()
    with History(db) as h:
        runs = h.run_infos()
        assert [r.commit_id for r in runs] == ["c0", "c1", "c2"] and {r.label for r in runs} == {"p1"}
        assert [p.value for p in h.series(SeriesKey("p1", "", "vrack", "single p50", "e2e"))] == [100.0, 101.0, 102.0]
        assert h.db.execute("PRAGMA user_version").fetchone()[0] == history.SCHEMA_VERSION
        assert h.db.execute("PRAGMA application_id").fetchone()[0] == history.APPLICATION_ID
    with History(db) as h:  # opening again changes nothing
        assert len(h.run_infos()) == 3


def test_run_context_samples_and_incomplete_run_are_kept(tmp_path, capsys):
    f = tmp_path / "b.json"
    f.write_text(json.dumps(synth_doc(0, incomplete="board vb2 stopped answering after 150 frames")))
    db = tmp_path / "r.sqlite"
    assert main(["history", "add", str(f), "--db", str(db), "--label", "my-net"]) == 0
    assert "INCOMPLETE: board vb2 stopped answering" in capsys.readouterr().out
    with History(db) as h:
        (r,) = h.run_infos()
        assert (r.label, r.model, r.complete, r.rack, r.commit_id) == ("my-net", "digits_fc", False, "vrack", "c000")
        assert r.hops["single"][0] == "link host->s0" and r.hops["single"].index("board s1") == 3
        assert r.env["boards"]["vb1"]["pynq_version"] == "3.0.1" and r.env["data"]["source"] == "my.npz"
        s = h.samples(r.run_id)
        assert len(s[("single", "hop", "board s1")]) == 150
        # the critical-path parts add up to the end to end, frame by frame
        parts = sum(s[("single", "critical", hop)] for hop in r.hops["single"])
        assert np.allclose(parts, s[("single", "e2e", "e2e")], atol=0.01)
    assert main(["history", "list", "--db", str(db)]) == 0
    assert "INCOMPLETE" in capsys.readouterr().out


def test_compare_flags_the_slower_board_and_nothing_else(tmp_path, capsys):
    db = tmp_path / "r.sqlite"
    make_history(db, runs=6, slow_at=5, incomplete_at=3)
    assert main(["history", "compare", "previous", "latest", "--db", str(db), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert (doc["a"]["run_id"], doc["b"]["run_id"]) == (5, 6)
    assert sorted(doc["regressions"]) == ["single board s1", "single e2e", "stream board s1", "stream e2e"]
    by = {(h["mode"], h["hop"]): h for h in doc["hops"]}
    assert by[("single", "board s1")]["p_value"] < 1e-10
    assert by[("single", "board s1")]["change"] == pytest.approx(1000 / 300, rel=0.05)
    assert all(not h["significant"] for h in doc["hops"] if h["hop"] not in ("board s1", "e2e"))
    # two ordinary runs: nothing flagged, exit 0; runs by label and by commit resolve
    assert main(["history", "compare", "1", "c001", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "0 hop(s) significantly slower in B than in A" in out and "SLOWER" not in out
    assert main(["history", "compare", "nope", "latest", "--db", str(db)]) == 2


def test_check_names_label_board_and_hop_and_ack_silences_it(tmp_path, capsys):
    db = tmp_path / "r.sqlite"
    make_history(db, runs=6, slow_at=5, incomplete_at=3)
    # one slower run is an outlier until the next one shows it too: said, but exit 0
    assert main(["history", "check", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "possible regression (only the newest run shows it): single p50 at board s1" in out
    make_history(db, runs=7, slow_at=5, incomplete_at=3, start=6)
    assert main(["history", "check", "--db", str(db)]) == 1
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("REGRESSION: single p50 at board s1"))
    assert "(board vb1)" in line and "label 'digits-fc'" in line and "model digits_fc" in line
    assert "since run 6 " in line and "commit c005" in line and "plan plan0001" in line and "rack vrack" in line
    assert any(l.startswith("REGRESSION: single p50 at e2e: ") for l in out.splitlines())
    link = "\n".join(l for l in out.splitlines() if "at link " in l)
    assert link == ""  # links did not change; when they do, the frame size is named: see test below
    assert main(["history", "ack", "6", "--why", "new bitstream, slower by design", "--db", str(db)]) == 0
    capsys.readouterr()
    assert main(["history", "check", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "acknowledged (new bitstream, slower by design)" in out and "0 regression(s) in effect" in out


def test_export_bmf(tmp_path, capsys):
    db = tmp_path / "r.sqlite"
    make_history(db, runs=2)
    out = tmp_path / "run.bmf.json"
    assert main(["history", "export", "latest", "--format", "bmf", "-o", str(out), "--db", str(db)]) == 0
    bmf = json.loads(out.read_text())
    with History(db) as h:
        vals = h.values(2)
    e2e = bmf["digits-fc/single/e2e"]
    assert e2e["latency"]["value"] == pytest.approx(vals[("single p50", "e2e")] * 1000)  # ns
    assert e2e["latency"]["upper_value"] == pytest.approx(vals[("single p99", "e2e")] * 1000)
    assert bmf["digits-fc/accuracy/rack"]["accuracy"]["value"] == pytest.approx(0.95)
    # the shape Bencher's JSON schema asks for: benchmark -> measure -> {"value": number, ...}
    for bench in bmf.values():
        for measure in bench.values():
            assert isinstance(measure["value"], float) and set(measure) <= {"value", "lower_value", "upper_value"}


def test_a_slower_link_is_named_with_its_boards_and_frame_size(tmp_path, capsys):
    db = tmp_path / "r.sqlite"
    make_history(db, runs=6, slow_at=4, slow_hop="link s0->s1", slow_us=200.0)
    assert main(["history", "check", "--db", str(db)]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION: single p50 at link s0->s1 (board vb0 -> vb1, 256 B per frame): " in out


def test_run_with_the_users_data_goes_into_the_history(fc_plan, tmp_path, capsys):
    """`splitrack run --data my.npz` (local agents): accuracy on the user's labels, kept by `history add run.json`."""
    from splitting.reference_models import digits_data

    _, _, x, y = digits_data()
    x, y = x[:40].reshape(40, -1), y[:40].copy()
    y[:10] = (y[:10] + 1) % 10  # the user's labels, not splitrack's
    np.savez(tmp_path / "my.npz", x=x, y=y)
    out = tmp_path / "run"
    assert main(["run", str(fc_plan.root), "--local", "--data", str(tmp_path / "my.npz"), "--label", "mine",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "run.json").read_text())["summary"]
    assert summary["accuracy"] <= 30 / 40 + 1e-9  # at least the 10 altered labels are wrong
    db = tmp_path / "h.sqlite"
    assert main(["history", "add", str(out / "run.json"), "--db", str(db)]) == 0
    with History(db) as h:
        (r,) = h.run_infos()
        assert (r.label, r.source, r.env["data"]["source"]) == ("mine", "run", str(tmp_path / "my.npz"))
        assert h.values(r.run_id)[("accuracy", "rack")] == pytest.approx(summary["accuracy"])
        assert len(h.samples(r.run_id)[("run", "e2e", "e2e")]) == 40
