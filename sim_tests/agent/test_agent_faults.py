"""Failures end in clear errors within bounded time, name the board and stage, and keep every result
already received: a compute error, a frame dropped on a board, an agent killed mid-stream, a part that
never reaches a join, an agent that is not there, a bad config."""
import subprocess
import sys
import time

import numpy as np
import pytest

from harness.rack.local_rack import LocalRack, LocalRackError
from identity_plan import identity_plan
from harness.measure.stream import AgentUnreachable, Pipeline, StreamError
from harness.rack.wiring import Endpoint, agent_config, wire


def _x(n, shape=(8,), seed=0):
    return np.random.default_rng(seed).uniform(-4, 4, (n,) + shape)


def test_a_frame_dropped_on_a_board_names_where_it_was_last_seen(tmp_path, sched_latency):
    plan = identity_plan(3, shape=(8,))
    with LocalRack(tmp_path) as rack:
        wiring = rack.start(plan, faults={"s1": {"drop_frames": [5]}})
        t0 = time.monotonic()
        with Pipeline(wiring) as pipe, pytest.raises(StreamError) as ei:
            pipe.stream(_x(20), in_flight=4, timeout=2.0)
        elapsed = time.monotonic() - t0
    # the 2 s frame timeout fires, not before it runs out, and then at once: within that plus the watchdog's
    # 0.1 s tick plus the wake-ups on the way (connecting to 3 agents, 20 frames through 3 stages with a few
    # hand-offs each, the trace queries of the explanation: a few hundred, counted as 1000)
    assert 2.0 <= elapsed <= sched_latency.bound(2.0 + 0.1, wakeups=1000), (elapsed, sched_latency)
    e = ei.value
    msg = str(e)
    assert "frame 5 did not come back" in msg
    assert "last seen at s1 on board local-s1 (stage 1): dropped" in msg
    assert "s2 on board local-s2 (stage 2) has no trace of it" in msg
    got = e.result.frames
    assert 5 not in got and len(got) == 19  # every other frame came back and is kept
    c = plan.links[0]
    for i, f in enumerate(e.result.frame_ids):
        if f in got:
            np.testing.assert_array_equal(got[f].output, c.decode(c.encode(_x(20)[i])))


def test_compute_error_is_reported_by_board_and_stage(tmp_path):
    plan = identity_plan(2, shape=(8,))
    with LocalRack(tmp_path) as rack:
        wiring = rack.start(plan)
        # a config whose output shape the partition cannot produce: every frame fails in compute on s1
        cfg = dict(rack.agents["s1"].config, output_shape=[3], backend={"kind": "passthrough", "decode": True})
        rack.agents["s1"].config = cfg
        rack.restart("s1")
        with Pipeline(wiring) as pipe, pytest.raises(StreamError) as ei:
            pipe.stream(_x(3), in_flight=1, timeout=5.0)
        log = rack.agents["s1"].log.read_text()
    msg = str(ei.value)
    assert "board local-s1 (partition s1, stage 1)" in msg and "failed on frame" in msg
    assert "cannot reshape" in msg
    assert "Traceback" in log  # the board's log has the whole story


def test_agent_killed_mid_stream_ends_the_stream_quickly_and_keeps_results(tmp_path, sched_latency):
    plan = identity_plan(3, shape=(8,))
    with LocalRack(tmp_path) as rack:
        wiring = rack.start(plan, timing={"cycles": 200_000, "clock_mhz": 100})  # 2 ms a stage
        with Pipeline(wiring) as pipe:
            first = pipe.stream(_x(5))  # the rack works
            import threading

            threading.Timer(0.3, rack.kill, args=("s1",)).start()
            t0 = time.monotonic()
            with pytest.raises(StreamError) as ei:
                pipe.stream(_x(2000), in_flight=4, timeout=30.0)
            elapsed = time.monotonic() - t0
    assert first.complete
    # not the 30 s frame timeout: a lost agent is noticed at once. The kill comes 0.3 s after the timer starts
    # (before t0), then the frames ahead of the dead agent get min(timeout, 2 s) of grace, the watchdog ticks
    # every 0.1 s; the wake-ups on the way (the kill, the readers noticing, the frames still in flight):
    # fewer than a few hundred, counted as 1000
    assert elapsed < 30.0
    assert elapsed <= sched_latency.bound(0.3 + 2.0 + 0.1, wakeups=1000), (elapsed, sched_latency)
    msg = str(ei.value)
    assert "s1 on board local-s1 (stage 1)" in msg
    assert 0 < len(ei.value.result.frames) < 2000


def test_join_reports_a_part_that_never_comes(tmp_path):
    plan = identity_plan(1, shape=(6,), fan=2)  # s0 -> n0, n1 -> join -> host
    with LocalRack(tmp_path) as rack:
        cfgs = {"n1": {"drop_frames": [2]}}
        wiring = rack.start(plan, faults=cfgs)
        # the join gives up on frame 2 after its part timeout and says which link never delivered
        cfg = dict(rack.agents["join"].config, part_timeout=0.5)
        rack.agents["join"].config = cfg
        rack.restart("join")
        with Pipeline(wiring) as pipe, pytest.raises(StreamError) as ei:
            pipe.stream(_x(6, (6,)), in_flight=2, timeout=5.0)
    msg = str(ei.value)
    assert "join" in msg and "frame 2 waited" in msg and "from n1" in msg
    assert len(ei.value.result.frames) == 5


def test_unreachable_agent_is_named(tmp_path, sched_latency):
    plan = identity_plan(1, shape=(8,))
    cfg = agent_config(plan, "s0", {"s0": Endpoint("ghost-board", "127.0.0.1", 1)}, {"kind": "passthrough"})
    wiring = wire(plan, {"s0": Endpoint("ghost-board", "127.0.0.1", 1)}, {"s0": cfg}, secret=b"k" * 32)
    t0 = time.monotonic()
    with pytest.raises(AgentUnreachable, match="s0 on board ghost-board .stage 0. at 127.0.0.1:1"):
        Pipeline(wiring, connect_timeout=0.5)
    # refused at once (nothing listens on port 1), at worst given up after the 0.5 s connect timeout; a
    # connect and its error are a handful of wake-ups, counted as 100
    assert time.monotonic() - t0 <= sched_latency.bound(0.5, wakeups=100), sched_latency


def test_bad_configs_fail_at_start_with_a_reason(tmp_path):
    plan = identity_plan(1, shape=(8,))
    with pytest.raises(LocalRackError, match="backend kind 'fpga'"):
        with LocalRack(tmp_path / "a") as rack:
            rack.start(plan, {"s0": {"kind": "fpga"}})
    with pytest.raises(LocalRackError, match="emulation library .*not found"):
        with LocalRack(tmp_path / "b") as rack:
            rack.start(plan, {"s0": {"kind": "emulation", "library": "nope.so", "project": "p", "n_in": 8,
                                     "n_out": 8}})
    (tmp_path / "bad.json").write_text("{not json")
    p = subprocess.run([sys.executable, "-m", "harness.agent", str(tmp_path / "bad.json")], capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 2 and "cannot read config" in p.stderr
