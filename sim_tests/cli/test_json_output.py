"""`--json` is one JSON document on stdout, whatever the cache state (issue 27).

Every command that has the option (`grep -rn '"--json"' harness/cli`) runs as a user runs it,
in a fresh process, with SPLITRACK_CACHE pointing at a new empty folder: hls4ml converts and compiles from
scratch (and says "Keras v2 handler used for layer ..." for an Embedding), Verilator builds, rule4ml
estimates. stdout must parse with json.loads; what the libraries printed is in the library log, or on
stderr with -v, never on stdout. Models are tiny: each hls4ml project compiles in seconds.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from child_env import child_env

REPO = Path(__file__).resolve().parents[2]
HLS4ML_NOTE = "Keras v2 handler used for layer emb"  # hls4ml 1.3 converts an Embedding with its Keras-2 handler


def _cli(tmp_path, *args, cache=None, timeout=900):
    """Run `splitrack ARGS` in a new process with an empty cache of its own (or `cache`)."""
    cache = cache or (tmp_path / f"cache-{len(list(tmp_path.glob('cache-*')))}")
    r = subprocess.run([sys.executable, "-m", "harness.cli.commands", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, cwd=REPO, env=child_env(SPLITRACK_CACHE=str(cache)))
    return r, Path(cache)


def _one_document(r):
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    return json.loads(r.stdout)  # raises on anything before, after or inside the document


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny models (an MLP, and an Embedding that hls4ml converts with a note on stdout) and a plan of
    each, written without touching any hls4ml cache (split_model; the plans' checks come with verify)."""
    import keras

    from splitting.split import split_model, write_plan

    d = tmp_path_factory.mktemp("json_models")
    rng = np.random.default_rng(2)
    mlp = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu", name="d1"),
                            keras.layers.Dense(2, name="out")], name="mlp")
    emb = keras.Sequential([keras.Input((3,), dtype="int32"), keras.layers.Embedding(5, 2, name="emb"),
                            keras.layers.Flatten(name="fl"), keras.layers.Dense(2, name="out")], name="emb")
    for m in (mlp, emb):
        m.set_weights([rng.normal(0, 0.5, w.shape).astype(w.dtype) for w in m.get_weights()])
        m.save(d / f"{m.name}.keras")
        plan, parts = split_model(m)
        write_plan(plan, parts, d / f"{m.name}_plan")
    return d


def test_boards_json(tmp_path):
    r, _ = _cli(tmp_path, "boards", "--json")
    assert r.returncode == 0 and "pynq-z2" in {b["name"] for b in _one_document(r)["boards"]}


def test_plan_json_on_an_empty_cache_writes_the_plan_folder(models, tmp_path):
    """rule4ml's estimates and hls4ml's conversion check (split's know-before-you-write) run from scratch."""
    r, _ = _cli(tmp_path, "plan", models / "mlp.keras", "-o", tmp_path / "p", "--json")
    doc = _one_document(r)
    assert r.returncode == 0 and doc["boards"] >= 1 and doc["plan_folder"] == str(tmp_path / "p")


def test_verify_json_on_an_empty_cache_and_hls4ml_notes_go_to_the_log(models, tmp_path):
    r, cache = _cli(tmp_path, "verify", models / "emb_plan", "-n", "16", "--json")
    doc = _one_document(r)
    assert r.returncode == 0 and doc["ok"] and doc["hls_bit_exact"], doc
    assert HLS4ML_NOTE not in r.stderr
    assert HLS4ML_NOTE in (cache / "log" / "libraries.log").read_text()
    # -v shows what libraries print: on stderr (cached build now: the conversion note comes with the
    # know-before-you-write check of a new split), stdout stays the document
    r, _ = _cli(tmp_path, "-v", "split", models / "emb.keras", "-o", tmp_path / "again", cache=tmp_path / "fresh")
    assert r.returncode == 0 and HLS4ML_NOTE in r.stderr and HLS4ML_NOTE not in r.stdout


def test_a_failed_gxx_build_keeps_stdout_json_and_says_why_in_one_line(models, tmp_path):
    """g++ fails inside the parallel build (a broken toolchain: a `g++` first on PATH that passes
    build_lib.sh's feature probes and fails every compile). hls4ml print()s the compiler's whole log from the
    build thread; it goes to the library log, stdout stays one JSON document (or nothing), and the error is one
    line on stderr naming the compile."""
    import os
    import shutil

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "g++").write_text(f"#!/bin/sh\ncase \"$*\" in *-fsyntax-only*) exec {shutil.which('g++')} \"$@\";; esac\n"
                              "echo 'fake g++: error: boom-compiler-log' >&2\nexit 1\n")
    (fake / "g++").chmod(0o755)
    cache = tmp_path / "gxx-cache"
    r = subprocess.run([sys.executable, "-m", "harness.cli.commands", "verify", str(models / "mlp_plan"), "-n", "8",
                        "--json"], capture_output=True, text=True, timeout=900, cwd=REPO,
                       env=child_env(SPLITRACK_CACHE=str(cache), PATH=f"{fake}{os.pathsep}{os.environ['PATH']}"))
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "boom-compiler-log" not in r.stdout and (r.stdout.strip() == "" or json.loads(r.stdout) is not None)
    err = [line for line in r.stderr.splitlines() if line.startswith("splitrack")]
    assert len(err) == 1 and "g++ could not build" in err[0] and "boom-compiler-log" in err[0], r.stderr[-2000:]
    assert "boom-compiler-log" in (cache / "log" / "libraries.log").read_text()


@pytest.mark.slow  # Verilator builds the chain from scratch (minutes); warm: test_cosim.py::test_cli_json
def test_cosim_json_on_an_empty_cache(models, tmp_path):
    r, _ = _cli(tmp_path, "cosim", models / "mlp_plan", "--frames", "2", "--no-write", "--json")
    doc = _one_document(r)
    assert r.returncode == 0 and doc["ok"] and doc["frames"] == 2


def test_history_compare_json(tmp_path):
    sys.path.insert(0, str(REPO / "sim_tests"))
    from synthetic_history import make_history

    make_history(tmp_path / "h.sqlite", runs=2)
    r, _ = _cli(tmp_path, "history", "compare", "previous", "latest", "--db", tmp_path / "h.sqlite", "--json")
    assert r.returncode in (0, 1) and "hops" in _one_document(r)


def test_bench_json_dash_on_an_empty_cache(models, tmp_path):
    """`bench --json -`: the bench document on stdout (progress on stderr); the rack's boards compile the
    partition's emulation from scratch."""
    from harness.rack.virtual_rack import rack_down, rack_up

    cache = tmp_path / "bench-cache"
    rack = tmp_path / "rack.toml"
    rack_up(1, rack, state=tmp_path / "state", progress=lambda s: None)
    try:
        r, _ = _cli(tmp_path, "bench", models / "mlp_plan", "--boards", rack, "--frames", "10", "--no-cpu",
                    "--data", "random", "--json", "-", cache=cache)
    finally:
        rack_down(rack)
    doc = _one_document(r)
    assert r.returncode == 0 and doc["complete"] and doc["frames"] == 10, r.stderr[-2000:]
    assert re.search(r"^data: random", r.stderr, re.M)  # progress went to stderr


def test_doctor_json_with_a_plan_on_an_empty_cache(models, tmp_path):
    """`doctor --boards RACK PLAN --json` in a fresh process on an empty cache: one document naming every
    board, nothing the libraries say on stdout (a fresh virtual rack: all good, exit 0)."""
    from harness.rack.virtual_rack import rack_down, rack_up

    rack = tmp_path / "rack.toml"
    rack_up(1, rack, state=tmp_path / "state", progress=lambda s: None)
    try:
        r, _ = _cli(tmp_path, "doctor", "--boards", rack, models / "mlp_plan", "--json")
    finally:
        rack_down(rack)
    doc = _one_document(r)
    assert r.returncode == 0 and doc["ok"] and [b["board"] for b in doc["boards"]] == ["vpynq0"], r.stderr[-2000:]
    # the plan's partition is named, and an empty cache is said as such (deploy compiles it), not as a problem
    assert doc["boards"][0]["facts"]["partition"] == "s0" and "not compiled" in doc["boards"][0]["facts"]["artifact"]


def test_every_json_option_is_tested_here():
    """The commands with a --json option are the ones above (a new one must join this file)."""
    found = set()
    for f in (REPO / "harness" / "cli").glob("*.py"):  # argparse lives in harness/cli only (test_layout)
        if '"--json"' in f.read_text():
            found.add(f.stem)
    assert found == {"verify", "plan", "history", "bench", "cosim", "doctor"}, found


def test_thread_output_routes_only_its_own_threads_prints(tmp_path, monkeypatch):
    """What a build thread print()s inside thread_output goes to the library log; what another thread prints
    at the same time stays on stdout; stdout is the caller's own stream again afterwards."""
    import io
    import threading

    from splitting import quiet_tensorflow as qt

    monkeypatch.setenv("SPLITRACK_CACHE", str(tmp_path / "c"))
    monkeypatch.setattr(qt, "_quiet", True)
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    inside, done = threading.Event(), threading.Event()

    def build():
        with qt.thread_output("hls4ml: compiling partition s9"):
            print("g++ says: error in the build thread")
            inside.set()
            done.wait(10)

    t = threading.Thread(target=build)
    t.start()
    assert inside.wait(10)
    print("the main thread's document")  # while the build thread's routing is in place
    done.set()
    t.join(10)
    assert sys.stdout is out
    assert out.getvalue() == "the main thread's document\n"
    log = (tmp_path / "c" / "log" / "libraries.log").read_text()
    assert "compiling partition s9" in log and "g++ says: error in the build thread" in log
