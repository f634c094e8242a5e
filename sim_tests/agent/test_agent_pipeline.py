"""Agents as local processes (passthrough backend): frames through chains and fan-out/join, timestamps,
clock probes, health, the timing model, clean shutdown and restart."""
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from harness.agent import wire
from harness.rack.local_rack import LocalRack
from identity_plan import identity_plan
from harness.measure.stream import Pipeline
from harness.rack.wiring import Wiring
from splitting.contract import Contract

DTYPE = "ap_fixed<16,6>"


def _expected(plan, x):
    # identity plans: the output is the input, quantised once by the wire type
    c = Contract("host", "host", plan.model["input_shape"], plan.links[0].dtype)
    return np.stack([c.decode(c.encode(v)) for v in x])


@pytest.fixture(scope="module")
def fan_rack(tmp_path_factory):
    """host -> s0 -> {n0, n1, n2} (each a slice) -> join (concat) -> s1 -> host; s1's clock is skewed."""
    plan = identity_plan(2, shape=(4, 12), dtype=DTYPE, fan=3)
    rack = LocalRack(tmp_path_factory.mktemp("fan"))
    wiring = rack.start(plan, clock_skew_ns={"s1": 250_000_000}, in_flight=4)
    yield plan, rack, wiring
    rack.stop()


def test_fan_out_and_join_reassemble_every_frame_exactly(fan_rack):
    plan, rack, wiring = fan_rack
    x = np.random.default_rng(3).uniform(-40, 40, (120, 4, 12))  # beyond ap_fixed<16,6>: wraps, as on a board
    with Pipeline(wiring) as pipe:
        res = pipe.stream(x, in_flight=6, timeout=20)
    assert res.complete
    np.testing.assert_array_equal(res.outputs(), _expected(plan, x))


def test_every_partition_stamps_every_frame_in_order(fan_rack):
    plan, rack, wiring = fan_rack
    x = np.random.default_rng(4).uniform(-4, 4, (40, 4, 12))
    with Pipeline(wiring) as pipe:
        res = pipe.stream(x, in_flight=4)
    for f in res.frame_ids:
        st = res.stamps(f)
        assert set(st) == set(plan.partitions)
        for name, d in st.items():
            assert d["stage"] == plan.partition(name).stage
            assert d["t_recv"] <= d["t_compute_start"] <= d["t_compute_end"] <= d["t_send"]
            assert set(d["t_recv_by_src"]) == {c.src for c in plan.inputs_of(name)}
        # one clock for all unskewed local agents: causality holds along every link
        for c in plan.links:
            if "s1" in (c.src, c.dst) or "host" in (c.src, c.dst):
                continue
            assert st[c.src]["t_send"] <= st[c.dst]["t_recv_by_src"][c.src]
        assert res.frames[f].t_send <= st["s0"]["t_recv"]
        # s1 runs 250 ms ahead (the skew is for testing clock-offset estimation): its stamps say so. On the one
        # true clock a link's delay is >= 0, so the skew bounds them from each side, exactly; by how much a
        # busy machine's link delays move them (75 ms has been seen with two CPU burners) is not asserted
        assert st["s1"]["t_recv"] - st["join"]["t_send"] >= 250_000_000
        assert st["s1"]["t_send"] - res.frames[f].t_recv <= 250_000_000


def test_clock_probe_measures_the_skew(fan_rack):
    plan, rack, wiring = fan_rack
    with Pipeline(wiring) as pipe:
        for name, skew in (("s0", 0), ("s1", 250_000_000)):
            probes = [pipe.probe(name) for _ in range(30)]
            best = min(probes, key=lambda p: (p[3] - p[0]) - (p[2] - p[1]))
            t1, t2, t3, t4 = best
            assert t1 <= t4 and t2 <= t3
            offset = ((t2 - t1) + (t3 - t4)) / 2
            assert abs(offset - skew) <= (t4 - t1) / 2 + 1000  # the NTP bound: half the round trip


def test_ping_reports_health_and_what_happened_to_a_frame(fan_rack):
    plan, rack, wiring = fan_rack
    with Pipeline(wiring) as pipe:
        res = pipe.stream(np.zeros((3, 4, 12)))
        h = pipe.ping("join", frame=res.frame_ids[1])
        assert h["partition"] == "join" and h["plan_hash"] == plan.hash
        assert h["frames_done"] >= 3 and h["free_memory"] > 0 and h["free_disk"] > 0
        assert h["frame_state"] == "sent"
        assert pipe.ping("n1", frame=10**9)["frame_state"] == "unknown"


def test_a_new_host_session_forgets_the_frames_of_the_last_one(fan_rack):
    """Frame ids start at 0 for every Pipeline: what an agent remembers of an earlier stream must neither show
    up as the state of a new frame of the same id nor join such a frame as one of its parts."""
    plan, rack, wiring = fan_rack
    with Pipeline(wiring) as pipe:
        first = pipe.stream(np.zeros((3, 4, 12)))
        assert pipe.ping("join", frame=first.frame_ids[1])["frame_state"] == "sent"
    # parts of frame 1 from two of the join's three producers, left waiting as if their stream had broken off
    stale = np.full((4, 4), 7.0)
    ep = wiring.endpoints["join"]
    with Pipeline(wiring) as session:
        for c in plan.inputs_of("join")[1:]:  # each part from a connection of its producer (only it may send it)
            with wire.connect(ep.address, wiring.secret, 5, wiring.agent_id("join"),
                              wire.peer_id(wiring.plan_hash, c.src)) as s:
                s.sendall(wire.pack_message(wire.MsgType.FRAME, frame=session._base | 1,
                                            stage=plan.partition(c.src).stage, part=c.index,
                                            payload=c.encode(stale), records=b"\0" * 40 * wiring.records[c.src]))
        deadline = time.monotonic() + 5
        while session.ping("join", frame=1)["frame_state"] != "waiting for parts: have 2 of 3":
            assert time.monotonic() < deadline, "the stale parts never arrived"
            time.sleep(0.01)
    x = np.random.default_rng(5).uniform(-4, 4, (3, 4, 12))
    with Pipeline(wiring) as pipe:
        assert pipe.ping("join", frame=1)["frame_state"] == "unknown"
        res = pipe.stream(x, timeout=5)
    assert res.frame_ids == first.frame_ids  # the same ids again ...
    np.testing.assert_array_equal(res.outputs(), _expected(plan, x))  # ... and no stale part in frame 1


@pytest.mark.parametrize("elements,in_flight", [(64, 16), (16384, 8)])
def test_every_frame_arrives_in_both_streaming_modes_with_progress(tmp_path, elements, in_flight):
    """Small frames stream self-clocked (each result sends the next frame from the reader thread); a window too
    large for the sockets' buffers streams from the caller's thread. Either way: every frame, exactly, never
    more than `in_flight` unanswered, and progress reported in tenths up to the total."""
    from harness.measure import stream

    window = in_flight * (24 + 2 * elements)
    assert (window <= stream.SELF_CLOCKED_BYTES) == (elements == 64)  # one case for each mode
    plan = identity_plan(2, shape=(elements,), dtype=DTYPE)
    x = np.random.default_rng(6).uniform(-8, 8, (50, elements))
    told = []
    with LocalRack(tmp_path) as rack:
        wiring = rack.start(plan)
        with Pipeline(wiring) as pipe:
            res = pipe.stream(x, in_flight=in_flight, timeout=10, progress=lambda done, n: told.append((done, n)))
    np.testing.assert_array_equal(res.outputs(), _expected(plan, x))
    assert told == [(k, 50) for k in range(5, 51, 5)]
    # at no time more than in_flight frames unanswered: frame i + in_flight left after frame i came back
    t_send = [res.frames[f].t_send for f in res.frame_ids]
    t_recv = [res.frames[f].t_recv for f in res.frame_ids]
    assert all(t_send[i + in_flight] >= t_recv[i] for i in range(len(x) - in_flight))


def test_wiring_round_trips_through_json(fan_rack, tmp_path):
    plan, rack, wiring = fan_rack
    again = Wiring.load(wiring.save(tmp_path / "wiring.json"))
    assert again.to_dict() == wiring.to_dict()
    x = np.random.default_rng(5).uniform(-4, 4, (5, 4, 12))
    with Pipeline(again) as pipe:
        np.testing.assert_array_equal(pipe.stream(x).outputs(), _expected(plan, x))


def test_timing_model_makes_each_stage_take_the_fpga_time_and_stages_overlap(tmp_path):
    plan = identity_plan(3, shape=(8,))
    cycles = 300_000  # 3 ms at 100 MHz
    with LocalRack(tmp_path) as rack:
        wiring = rack.start(plan, timing={"cycles": cycles, "clock_mhz": 100})
        with Pipeline(wiring) as pipe:
            res = pipe.stream(np.zeros((12, 8)), in_flight=6)
    busy = []
    for f in res.frame_ids:
        for name, d in res.stamps(f).items():
            assert d["t_compute_end"] - d["t_compute_start"] >= 3_000_000  # never faster than the FPGA
            busy.append((d["t_compute_start"], d["t_compute_end"], name))
    # pipelining: some stage computes a frame while another stage computes a different one
    overlaps = sum(1 for a in busy for b in busy if a[2] != b[2] and a[0] < b[1] and b[0] < a[1])
    assert overlaps > 0


def test_shutdown_message_and_sigterm_stop_cleanly(tmp_path):
    plan = identity_plan(2, shape=(8,))
    rack = LocalRack(tmp_path)
    wiring = rack.start(plan)
    pid0 = rack.agents["s0"].folder / "agent-s0.pid"
    assert pid0.is_file()
    with Pipeline(wiring) as pipe:
        pipe.stream(np.zeros((4, 8)))
        pipe.conns["s0"].send(wire.pack_message(wire.MsgType.SHUTDOWN))
        assert rack.agents["s0"].proc.wait(timeout=10) == 0
    assert not pid0.exists()
    rack.kill("s1", signal.SIGTERM)
    assert rack.agents["s1"].proc.wait(timeout=10) == 0
    assert "agent stopped" in rack.agents["s1"].log.read_text()
    rack.stop()


def test_restart_after_a_crash_on_the_same_port(tmp_path):
    plan = identity_plan(2, shape=(8,))
    x = np.random.default_rng(6).uniform(-4, 4, (10, 8))
    with LocalRack(tmp_path) as rack:
        wiring = rack.start(plan)
        port = wiring.endpoints["s1"].port
        rack.kill("s1")  # SIGKILL: stale pidfile, socket in TIME_WAIT
        rack.agents["s1"].proc.wait(timeout=10)
        assert (rack.agents["s1"].folder / "agent-s1.pid").exists()
        again = rack.restart("s1")
        assert again.endpoint.port == port
        with Pipeline(wiring) as pipe:  # s0 reconnects to the new s1 on its own
            res = pipe.stream(x, timeout=10)
        np.testing.assert_array_equal(res.outputs(), _expected(plan, x))


def test_second_agent_with_the_same_pidfile_refuses_to_start(tmp_path):
    plan = identity_plan(1, shape=(8,))
    with LocalRack(tmp_path) as rack:
        rack.start(plan)
        folder = rack.agents["s0"].folder
        p = subprocess.run([sys.executable, "-m", "harness.agent", "config.json"], cwd=folder, capture_output=True,
                           text=True, timeout=30)
        assert p.returncode == 3 and "another agent" in p.stderr


def test_rate_paces_the_frames(fan_rack):
    """The pacer keeps to the schedule it computed: one origin, input i due i / rate after it, and no frame
    leaves before it is due. Not against frame 0's send time: on a busy machine frame 0 itself leaves late,
    and the next frame, on time, would look early. How late a frame leaves depends on the machine's load (and
    on the in_flight window), so it is not asserted here. Every frame may be in flight at once, so that the
    pacer alone decides when they leave: one that sent a frame early would show."""
    plan, rack, wiring = fan_rack
    rate = 50.0
    with Pipeline(wiring) as pipe:
        res = pipe.stream(np.zeros((12, 4, 12)), rate=rate, in_flight=12)
        assert pipe.stream(np.zeros((2, 4, 12)), in_flight=4).schedule is None  # unpaced: no schedule
    sched = res.schedule
    assert sched is not None and sched.rate == rate
    assert res.t_start <= sched.origin_ns <= res.frames[res.frame_ids[0]].t_send
    for i, f in enumerate(res.frame_ids):
        assert abs(sched.send_ns(i) - (sched.origin_ns + i * 20_000_000)) <= 1  # 20 ms apart, from one origin
        assert res.frames[f].t_send >= sched.send_ns(i), f"input {i} left before it was due"


def test_host_scatters_slices_and_gathers_parts(tmp_path):
    """Parallel partitions fed straight from the host (each its slice) and answering straight to it."""
    plan = identity_plan(0, shape=(3, 8), fan=4)
    assert len(plan.input_links) == 4 and len(plan.output_links) == 4
    x = np.random.default_rng(8).uniform(-9, 9, (30, 3, 8))
    with LocalRack(tmp_path) as rack:
        wiring = rack.start(plan)
        with Pipeline(wiring) as pipe:
            res = pipe.stream(x, in_flight=5)
    np.testing.assert_array_equal(res.outputs(), _expected(plan, x))
    assert set(res.stamps(res.frame_ids[0])) == {"n0", "n1", "n2", "n3"}


@pytest.mark.slow
def test_agent_runs_on_python38(tmp_path, python38):
    py = python38
    plan = identity_plan(2, shape=(4, 6), fan=2)
    x = np.random.default_rng(9).uniform(-40, 40, (30, 4, 6))
    with LocalRack(tmp_path, python=py) as rack:
        backends = {n: {"kind": "passthrough", "decode": True} for n in plan.partitions}  # numpy codec too
        wiring = rack.start(plan, backends, timing={"cycles": 1000, "clock_mhz": 100})
        with Pipeline(wiring) as pipe:
            assert pipe.ping("join")["python"].startswith("3.8.")
            res = pipe.stream(x)
    np.testing.assert_array_equal(res.outputs(), _expected(plan, x))
