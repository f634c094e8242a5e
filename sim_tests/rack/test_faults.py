"""Faults on a virtual rack. Each one must end in a clear error, in bounded time, naming the board and the
stage; keep every result already measured; and leave the other boards usable.

Rack: four virtual boards of this module plus, per test, the faulty board when it needs special options.
Plan: the FC reference model cut in three (one partition per board).
"""
from __future__ import annotations

import os
import posixpath
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from harness.rack.artifacts import artifact_files
from harness.rack.deploy import CODE, DeployError, deploy, undeploy
from harness.rack.health import check_board
from harness.rack.rackfile import Rack
from harness.rack.ssh import BoardError, connect
from harness.measure.stream import Pipeline, StreamError
from harness.rack.virtual_rack import start_board, stop_board

BOUND = 60.0  # seconds: "no hang" means an answer well within this (every fault here has a 1-10 s timeout)



@pytest.fixture(scope="module")
def x():
    from splitting.reference_models import digits_data, model_inputs

    return model_inputs("fc", digits_data()[2][:60]).astype(np.float32)


@pytest.fixture(scope="module")
def expected(plan3, x):
    from splitting.chain import emulation_runner, run_chain

    return run_chain(plan3, x, emulation_runner(plan3)).reshape(len(x), -1)


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return tmp_path_factory.mktemp("faultrack")


@pytest.fixture(scope="module")
def boards(state):
    started = [start_board(state, f"fb{i}") for i in range(3)]
    yield [b for b, _ in started]
    for _, p in started:
        stop_board(p)


@pytest.fixture
def extra(state):
    """extra(name, **start_board options) -> a board started for one test, stopped after it."""
    procs = []

    def make(name, **kw):
        b, p = start_board(state, name, **kw)
        procs.append(p)
        return b, p

    yield make
    for p in procs:
        stop_board(p)


def _usable(boards, plan, x, expected):
    """The healthy boards still deploy and stream correctly."""
    dep = deploy(plan, Rack("t", list(boards)))
    with Pipeline(dep.wiring) as pipe:
        out = pipe.stream(x[:20], timeout=10).outputs().reshape(20, -1)
    assert np.array_equal(out, expected[:20])


def _deploy_fails(plan, rack_boards, **kw) -> DeployError:
    t0 = time.monotonic()
    with pytest.raises(DeployError) as e:
        deploy(plan, Rack("t", rack_boards), **kw)
    assert time.monotonic() - t0 < BOUND
    return e.value


# --- deployment faults -----------------------------------------------------------------------------------
def test_board_that_does_not_answer(plan3, boards, extra, x, expected):
    mute, proc = extra("mute")
    os.kill(proc.pid, signal.SIGSTOP)  # the TCP port still accepts (kernel backlog); SSH never speaks
    try:
        err = _deploy_fails(plan3, [boards[0], mute, boards[1]], connect_timeout=2)
        assert [(f.board, f.stage) for f in err.failures] == [("mute", "connect")]
        assert "did not speak SSH within 2 s" in str(err)
        # refused by the checks before anything was uploaded to any board (harness.rack.checks)
        assert err.done == [] and str(err).startswith("nothing deployed: ")
        h = check_board(mute, timeout=2)
        assert not h.ok and h.reason.startswith("connect")
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    _usable(boards, plan3, x, expected)


def test_wrong_key(plan3, boards, state, tmp_path, x, expected):
    import asyncssh

    other = tmp_path / "other_key"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(other))
    wrong = replace(boards[1], key=other)
    err = _deploy_fails(plan3, [boards[0], wrong, boards[2]])
    assert [(f.board, f.stage) for f in err.failures] == [(wrong.name, "auth")]
    assert "refused key" in str(err) and "authorized_keys" in str(err)
    _usable(boards, plan3, x, expected)


def test_unknown_host_key(plan3, boards, tmp_path, x, expected):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    stranger = replace(boards[2], known_hosts=empty, host_key_policy="strict")
    err = _deploy_fails(plan3, [boards[0], boards[1], stranger])
    assert [(f.board, f.stage) for f in err.failures] == [(stranger.name, "host-key")]
    assert "ssh-keyscan" in str(err) and "trust-on-first-use" in str(err)
    assert empty.read_text() == ""  # strict: nothing was trusted behind the user's back
    _usable(boards, plan3, x, expected)


def test_corrupted_upload(plan3, boards, extra, x, expected):
    flaky, _ = extra("flaky", faults=["corrupt-upload"])
    err = _deploy_fails(plan3, [boards[0], flaky, boards[2]])
    assert [(f.board, f.stage) for f in err.failures] == [("flaky", "verify")]
    assert "sha256 mismatch" in str(err)
    with connect(flaky) as c:  # no corrupted file is left under a name the agent would load
        files = c.run(["ls", "-a", c.remote_path("splitrack/part")]).stdout.split()
        assert "partition.so" not in files and not [f for f in files if f.endswith(".upload")]
    _usable(boards, plan3, x, expected)


def test_full_disk(plan3, boards, extra, x, expected):
    full, _ = extra("full", disk_mb=0.1)  # 100 KiB: the agent's code fits, the partition's library does not
    err = _deploy_fails(plan3, [boards[0], boards[1], full])
    # deploy's disk check refuses before any upload, naming the bytes the partition's files need
    assert [(f.board, f.stage) for f in err.failures] == [("full", "disk")]
    assert str(err).startswith("nothing deployed: ") and "0 MiB of disk free" in str(err) and "MiB of files for s2" in str(err)
    with connect(full) as c:
        assert not c.exists(c.remote_path("splitrack/part"))
        # a disk that fills up after the check: the upload itself says so (every SFTP write's answer is read)
        files = list(CODE.items()) + list(artifact_files(plan3, "s2", full).items())
        with pytest.raises(BoardError, match="stage upload: no space left on the board"):
            for name, local in files:  # what deploy would upload (the agent's package in its folders), until full
                c.mkdirs(posixpath.dirname(c.remote_path(name)))
                c.put(local, c.remote_path(name))
    h = check_board(full)
    assert not h.ok and "disk free" in h.reason
    _usable(boards, plan3, x, expected)


# --- streaming faults ------------------------------------------------------------------------------------
def test_agent_killed_mid_stream(plan3, boards, x, expected):
    dep = deploy(plan3, Rack("t", list(boards)))
    victim = dep.placed["s1"]
    killed = []

    def kill_once(done, total):
        if not killed:
            with connect(dep.boards["s1"]) as c:
                c.run(["kill", "-KILL", str(victim.pid)])
            killed.append(done)

    t0 = time.monotonic()
    with Pipeline(dep.wiring) as pipe:
        with pytest.raises(StreamError) as e:
            pipe.stream(x, in_flight=2, rate=200, timeout=5, progress=kill_once)
    assert time.monotonic() - t0 < BOUND
    msg = str(e.value)
    assert f"s1 on board {victim.board} (stage 1)" in msg, msg
    res = e.value.result
    assert 0 < len(res.frames) < len(x)  # what came back before the kill is kept, and is right
    for f, r in res.frames.items():
        i = res.frame_ids.index(f)
        assert np.array_equal(r.output.reshape(-1), expected[i])
    # redeploy restarts only the dead agent; the pipeline works again
    again = deploy(plan3, Rack("t", list(boards)))
    assert again.placed["s1"].restarted and not again.placed["s0"].restarted and not again.placed["s2"].restarted
    assert again.flashed == []
    with Pipeline(again.wiring) as pipe:
        assert np.array_equal(pipe.stream(x[:20], timeout=10).outputs().reshape(20, -1), expected[:20])


def test_frame_that_never_comes_back(plan3, boards, x, expected):
    # force: fresh agents everywhere. Frame ids restart at 0 with every Pipeline, and an agent that served an
    # earlier stream still remembers its frame 7, which would confuse where the lost frame was last seen.
    dep = deploy(plan3, Rack("t", list(boards)), faults={"s1": {"drop_frames": [7]}}, force=True)
    t0 = time.monotonic()
    with Pipeline(dep.wiring) as pipe:
        with pytest.raises(StreamError) as e:
            pipe.stream(x[:30], in_flight=4, timeout=2)
    assert time.monotonic() - t0 < BOUND
    msg = str(e.value)
    board = dep.placed["s1"].board
    assert "frame 7 did not come back within 2 s" in msg and f"s1 on board {board} (stage 1)" in msg, msg
    res = e.value.result
    assert 7 not in res.frames
    assert len(res.frames) >= 20  # every other frame that was sent came back, and is right
    for f, r in res.frames.items():
        assert np.array_equal(r.output.reshape(-1), expected[res.frame_ids.index(f)])
    # the rack is fine afterwards (the fault was in that agent's config only)
    _usable(boards, plan3, x, expected)
    undeploy(Rack("t", list(boards)))
