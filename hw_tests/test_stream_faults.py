"""Streaming faults on whatever rack --boards names (real or virtual): an agent that dies mid-stream and a frame
that never comes back end in an error naming the board and the stage, within the stream's timeout, with every
frame that did come back kept and correct. The deployment faults (mute board, wrong key, unknown host key,
corrupted upload, full disk) need boards made faulty on purpose: sim_tests/rack/test_faults.py runs them on
virtual boards.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from harness.rack.ssh import connect
from harness.measure.stream import Pipeline, StreamError

pytestmark = pytest.mark.hw


@pytest.fixture
def fc_seq(make_plan, frames):
    from splitting.chain import emulation_runner, run_chain

    plan, _, _ = make_plan("fc_seq")
    x, _ = frames("fc")
    return plan, x, run_chain(plan, x, emulation_runner(plan)).reshape(len(x), -1)


def _check_kept(res, expected):
    for f, r in res.frames.items():
        assert np.array_equal(r.output.reshape(-1), expected[res.frame_ids.index(f)])


def test_agent_killed_mid_stream(fc_seq, deployed):
    plan, x, expected = fc_seq
    dep = deployed(plan)
    victim, board = dep.placed["s1"], dep.boards["s1"]
    sudo = ["sudo", "-n"] if board.sudo else []

    def kill_once(done, total, killed=[]):
        if not killed:
            with connect(board) as c:
                c.run(sudo + ["kill", "-KILL", str(victim.pid)])
            killed.append(done)

    t0 = time.monotonic()
    with Pipeline(dep.wiring) as pipe:
        with pytest.raises(StreamError) as e:
            pipe.stream(x, in_flight=2, rate=100, timeout=5, progress=kill_once)
    assert time.monotonic() - t0 < 60
    assert f"s1 on board {victim.board} (stage 1)" in str(e.value)
    assert 0 < len(e.value.result.frames) < len(x)
    _check_kept(e.value.result, expected)
    again = deployed(plan)  # only the dead agent is restarted; the pipeline works again
    assert again.placed["s1"].restarted and not again.placed["s0"].restarted
    with Pipeline(again.wiring) as pipe:
        assert np.array_equal(pipe.stream(x, timeout=10).outputs().reshape(len(x), -1), expected)


def test_frame_that_never_comes_back(fc_seq, deployed):
    plan, x, expected = fc_seq
    dep = deployed(plan, faults={"s1": {"drop_frames": [5]}}, force=True)
    t0 = time.monotonic()
    with Pipeline(dep.wiring) as pipe:
        with pytest.raises(StreamError) as e:
            pipe.stream(x[:20], in_flight=4, timeout=2)
    assert time.monotonic() - t0 < 60
    msg = str(e.value)
    assert "frame 5 did not come back within 2 s" in msg and f"s1 on board {dep.placed['s1'].board}" in msg, msg
    assert sorted(e.value.result.frames) == [f for f in e.value.result.frame_ids if f != 5]
    _check_kept(e.value.result, expected)
