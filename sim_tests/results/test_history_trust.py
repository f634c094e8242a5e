"""The history under concurrency and untrusted input: two `history add` on a new file never lose a run, and
a results file nested 100,000 deep, a FIFO or a device is one line, exit 2."""
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.results import history
from harness.results.history import History, HistoryError

REPO = Path(__file__).resolve().parents[2]


def _doc(i: int) -> dict:
    st = {"p50": 100.0 + i, "p90": 110.0, "p99": 130.0, "max": 200.0, "mean": 100.0, "jitter": 1.0, "n": 10}
    return {"kind": history.BENCH_KIND, "version": 1, "time": f"2026-01-0{i + 1}T00:00:00+00:00", "rack": "r",
            "machine": "m", "commit": f"c{i}", "plan_hash": "p",
            "reports": {"single": {"mode": "single", "frames": 10, "throughput_hz": 100.0, "hops": ["link host->s0"],
                                   "stats": {"e2e": st, "link host->s0": st},
                                   "breakdown_p50_us": {"link host->s0": 50.0}}}}


def _add(db: str, i: int, start, out) -> None:
    try:
        run, rows, samples = history.parse_bench(_doc(i))
        start.wait(10)
        with History(Path(db)) as h:
            h.add_run(run, rows, samples)
        out.put((i, "ok"))
    except BaseException as e:  # reported to the test, whatever it is
        out.put((i, f"{type(e).__name__}: {e}"))


def test_two_history_adds_on_a_new_file_never_lose_a_run(tmp_path):
    """Both processes open a file that does not exist yet at the same moment (a barrier), 12 rounds: every
    round keeps both runs and neither process is told the file is damaged (before BEGIN IMMEDIATE, the
    second one failed on the first's tables)."""
    ctx = multiprocessing.get_context("fork")
    for r in range(12):
        db = str(tmp_path / f"h{r}.sqlite")
        start, out = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_add, args=(db, i, start, out)) for i in (0, 1)]
        for p in procs:
            p.start()
        got = dict(out.get(timeout=60) for _ in procs)
        for p in procs:
            p.join(30)
        assert got == {0: "ok", 1: "ok"}, f"round {r}: {got}"
        with History(Path(db), create=False) as h:
            assert len(h.runs()) == 2, f"round {r}"


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "harness.cli.commands", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)


@pytest.mark.parametrize("body", ["[" * 100_000 + "]" * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000],
                         ids=["list", "object"])
def test_history_add_of_json_nested_100000_deep_is_one_line_exit_2(tmp_path, body):
    f = tmp_path / "deep.json"
    f.write_text(body)
    r = _cli("history", "add", str(f), "--db", str(tmp_path / "h.sqlite"))
    assert r.returncode == 2 and "nested more than" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_history_add_of_a_fifo_or_dev_zero_is_refused_at_once(tmp_path):
    fifo = tmp_path / "run.json"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.json"
    zero.symlink_to("/dev/zero")
    for f in (fifo, zero):
        t0 = time.monotonic()
        with pytest.raises(HistoryError, match="not a regular file"):
            history.load_file(f)
        assert time.monotonic() - t0 < 30  # a blocking read would wait for a writer forever


def test_a_bench_doc_of_the_wrong_shape_is_one_line(tmp_path):
    f = tmp_path / "b.json"
    doc = _doc(0)
    doc["reports"]["single"]["stats"] = "x"
    f.write_text(json.dumps(doc))
    with pytest.raises(HistoryError, match="mangles field"):
        history.load_file(f)


def test_nightly_run_files_of_one_second_or_one_instant_do_not_collide(tmp_path):
    """Two nights' bench files within one second (and, claimed from 8 threads at once, at one instant) get
    names of their own: none overwrites another (the names were the time to the second)."""
    from concurrent.futures import ThreadPoolExecutor

    from harness.jobs.nightly import run_file

    a = run_file(tmp_path, "2026-01-01T03:00:00.100000+00:00", "p1")
    b = run_file(tmp_path, "2026-01-01T03:00:00.900000+00:00", "p1")
    assert a != b and a.name.startswith("2026-01-01T030000_100000")
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda _: run_file(tmp_path, "2026-01-01T04:00:00.000000+00:00", "p1"), range(8)))
    assert len(set(paths)) == 8 and all(p.exists() for p in paths)


@pytest.mark.parametrize("hop,value,says", [("e2e", -5.0, None), ("board s0", -1e9, None), ("link host->s0", -3.6e9, None),
                                            ("link host->s0", 50.0, "untrusted: a board's stamps are out of order")])
def test_history_add_never_stores_implausible_or_untrusted_times_as_a_good_run(tmp_path, hop, value, says):
    """A bench file with a board dwell of -1e9 us, a link of -3.6e9 us (a clock probe an hour off), a negative
    end-to-end time, or one that says itself it is untrusted: `history add` keeps it as an incomplete run
    with the reason, which no trend check uses."""
    doc = _doc(0)
    doc["reports"]["single"]["hops"] = ["link host->s0", "board s0"]
    doc["reports"]["single"]["samples_us"] = {"e2e": [100.0, 101.0], "hops": {"link host->s0": [40.0, 41.0],
                                                                           "board s0": [50.0, 51.0]},
                                              "critical": {"link host->s0": [40.0, 41.0], "board s0": [50.0, 51.0]}}
    sm = doc["reports"]["single"]["samples_us"]
    (sm if hop == "e2e" else sm["hops"])[hop] = [value, 100.0]
    if says:
        doc["untrusted"] = says
    f = tmp_path / "b.json"
    f.write_text(json.dumps(doc))
    r = _cli("history", "add", str(f), "--db", str(tmp_path / "h.sqlite"))
    assert r.returncode == 0, r.stderr
    with History(tmp_path / "h.sqlite", create=False) as h:
        (run,) = h.run_infos()
    assert not run.complete and run.error.startswith("untrusted: ")
    assert (says or f"{value:.1f}") in run.error


def _clocked_doc(link_us: float, error_ns: float) -> dict:
    """A bench file whose link host->s0 came out at `link_us` (its lowest frame) and whose board vb0 (s0)
    states a clock mapping error of `error_ns`."""
    doc = _doc(0)
    rep = doc["reports"]["single"]
    rep["hops"] = ["link host->s0", "board s0"]
    rep["stats"]["board s0"] = dict(rep["stats"]["e2e"])
    rep["breakdown_p50_us"]["board s0"] = 50.0
    rep["samples_us"] = {"e2e": [100.0, 101.0], "hops": {"link host->s0": [link_us, 41.0], "board s0": [50.0, 51.0]},
                         "critical": {"link host->s0": [link_us, 41.0], "board s0": [50.0, 51.0]}}
    doc["placement"] = {"s0": "vb0"}
    doc["clocks"] = {"vb0": {"board": "vb0", "offset_ns": 0.0, "error_ns": error_ns}}
    return doc


def test_a_link_within_the_stated_clock_error_keeps_the_run_but_is_not_judged():
    """A burst of slow clock probes on a busy machine: board s0's clock is known to +-1.9 ms, and the link
    into it came out at -1.3 ms once. The bench (which checks stamps with that bound) kept the run; the history
    keeps it too (it had dropped every link below -1 ms whatever the stated bound), with its e2e and board
    figures, and leaves the link out of the judged figures, named with its error. A -1.3 ms link with a
    40 us bound, or a bound beyond LINK_ERROR_CAP_US, still makes the run untrusted."""
    run, rows, _ = history.parse_bench(_clocked_doc(-1300.0, 1.9e6))
    assert run.complete, run.error
    hops = {r.hop for r in rows}
    assert "e2e" in hops and "board s0" in hops and "link host->s0" not in hops
    assert run.env["links_not_judged"] == {"link host->s0": "clock error +-1900 us"}

    run, rows, _ = history.parse_bench(_clocked_doc(-1300.0, 40e3))
    assert not run.complete and "link host->s0 time of -1300.0 us" in run.error and "allows -1000 us" in run.error
    run, _, _ = history.parse_bench(_clocked_doc(-6000.0, 1e12))  # a bound of 1000 s judges nothing
    assert not run.complete and f"allows -{history.LINK_ERROR_CAP_US:.0f} us" in run.error
    for bad in (float("nan"), -5.0, "1e12"):  # not a measurement: no bound stated, the floor applies
        run, _, _ = history.parse_bench(_clocked_doc(-1300.0, bad))
        assert not run.complete, bad

    run, rows, _ = history.parse_bench(_clocked_doc(35.0, 40e3))  # a quiet run: every figure judged
    assert run.complete and "link host->s0" in {r.hop for r in rows} and "links_not_judged" not in run.env


def test_the_run_page_names_the_links_not_judged(tmp_path):
    from harness.results.dashboard import build_run

    run, rows, samples = history.parse_bench(_clocked_doc(-1300.0, 1.9e6))
    with History(tmp_path / "h.sqlite") as h:
        h.add_run(run, rows, samples)
        (stored,) = h.run_infos()
        assert stored.complete and stored.env["links_not_judged"] == {"link host->s0": "clock error +-1900 us"}
        page, _ = build_run(h, stored, None)
    assert "links not judged" in page and "link host-&gt;s0 (clock error +-1900 us)" in page
