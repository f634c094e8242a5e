"""The overlay backend in raw-word mode (io "raw"): frames received straight into DMA buffers and sent from them,
through a stand-in for pynq (sim_tests/agent/pynq_standin: PynqBuffer, AXI DMA channels) whose accelerator is
the partition's hls4ml emulation library on the raw words, or a copy. Outputs equal the plan's chained hls4ml
emulation bit for bit; wrong-size payloads are refused before any DMA; frames of an old session are dropped."""
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from harness.agent import wire
from harness.agent.agent_config import AgentConfigError
from harness.agent.overlay import OverlayBackend
from harness.measure.agent_conn import connect_agent
from harness.measure.stream import Pipeline
from harness.rack.local_rack import LocalRack
from identity_plan import identity_plan
from harness.rack.wiring import overlay_backend
from splitting.contract import Contract

STANDIN = Path(__file__).resolve().parent / "pynq_standin"
ROOT = Path(__file__).resolve().parents[2]
ENV = {"PYTHONPATH": f"{STANDIN}:{ROOT}"}


# --- the reader's destination for a frame's payload ------------------------------------------------------
def _frame(fid, payload, nrec=0, part=0):
    recs = b"".join(wire.RECORD.pack(i, i, i, 0, i, i, i, i) for i in range(nrec))
    return wire.pack_message(wire.MsgType.FRAME, frame=fid, stage=3, part=part, payload=payload, records=recs)


def test_message_into_puts_frames_in_the_destination_whatever_the_stream_looks_like():
    """Frames alone, back to back, split across sends, with control messages, other record counts and wrong
    sizes between them: every frame of the destination's size lands in it with its own bytes and records; the
    others come back as message() gives them, in order."""
    rng = np.random.default_rng(3)
    n = 40
    msgs = []
    for i in range(60):
        kind = rng.integers(0, 6)
        if kind == 4:
            msgs.append(("ping", wire.pack_message(wire.MsgType.PING, payload=b'{"i": %d}' % i)))
        elif kind == 5:
            size = int(rng.choice([n - 4, n + 4, 0]))
            msgs.append(("wrong", _frame(i, bytes(rng.integers(0, 256, size, dtype=np.uint8)), nrec=1)))
        else:
            nrec = int(rng.choice([1, 1, 1, 2, 0]))
            msgs.append(("frame", _frame(i, bytes(rng.integers(0, 256, n, dtype=np.uint8)), nrec=nrec)))
    a, b = socket.socketpair()
    stream = b"".join(m for _, m in msgs)

    def writer():  # chunks of every size: whole messages, pieces, several at once
        pos = 0
        while pos < len(stream):
            k = int(rng.integers(1, 150))
            b.sendall(stream[pos:pos + k])
            pos += k
            if rng.random() < 0.3:
                time.sleep(0.001)
        b.close()

    t = threading.Thread(target=writer)
    t.start()
    reader = wire.Reader(a, size=256)
    dest_buf = bytearray(n)
    dest = memoryview(dest_buf)
    ref = wire.Reader(socket.socketpair()[0])  # parses the expected messages from bytes
    for kind, m in msgs:
        ref.buf, ref.view, ref.start, ref.end = bytearray(m), memoryview(bytearray(m)), 0, len(m)
        ref.buf = ref.view.obj
        want = ref.message()
        got = reader.message_into(dest)
        assert got[:4] == want[:4]
        assert bytes(got[4]) == bytes(want[4])
        if kind == "frame":
            assert got[5] is dest and bytes(dest) == bytes(want[5])
        else:
            assert got[5] is not dest and bytes(got[5]) == bytes(want[5])
    t.join()
    with pytest.raises(EOFError):
        reader.message_into(dest)


def test_message_into_receives_a_lone_frame_in_place():
    """A frame that follows frames like it is received by one scatter read: the payload bytes go to the
    destination directly (the reader's own buffer never holds them)."""
    a, b = socket.socketpair()
    reader = wire.Reader(a)
    dest = memoryview(bytearray(64))
    b.sendall(_frame(1, b"\x01" * 64, nrec=1))
    assert reader.message_into(dest)[5] is dest  # the first frame teaches the layout
    payload = bytes(range(64))
    b.sendall(_frame(2, payload, nrec=1))
    m = reader.message_into(dest)
    assert m[1] == 2 and m[5] is dest and bytes(dest) == payload
    assert payload not in bytes(reader.buf)  # not staged in the reader's buffer: received where it is used


# --- the overlay backend in raw mode -----------------------------------------------------------------------
def _raw_backend(tmp_path, spec, plan=None, name="s0"):
    plan = plan or identity_plan(1, shape=(64,))
    bit = tmp_path / f"{name}.bit"
    bit.write_text(json.dumps(spec))
    return overlay_backend(plan, name, str(bit), str(bit.with_suffix(".hwh")), io="raw")


def test_raw_mode_refuses_links_raw_words_cannot_carry(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(STANDIN))
    plan = identity_plan(2, shape=(16,), fan=2)
    for name in plan.partitions:
        ins, outs = plan.inputs_of(name), plan.outputs_of(name)
        if len(ins) == 1 and len(outs) == 1 and outs[0].select is None:
            continue
        cfg = _raw_backend(tmp_path, {"accelerator": "copy"}, plan, name)
        with pytest.raises(AgentConfigError, match="io raw"):
            OverlayBackend(cfg, str(tmp_path), ins, outs, slots=2)
        break
    else:
        pytest.fail("identity_plan(fan=2) has no partition with several links")


def test_raw_mode_buffers_are_pynq_buffers_of_the_payload_size(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(STANDIN))
    plan = identity_plan(1, shape=(10,), dtype="ap_fixed<8,3>")  # 8-bit words, 32-bit beats: a padded last beat
    c_in, c_out = plan.inputs_of("s0")[0], plan.outputs_of("s0")[0]
    be = OverlayBackend(_raw_backend(tmp_path, {"accelerator": "copy"}, plan), str(tmp_path), [c_in], [c_out], slots=3)
    assert len(be.slots) == 3 and be.in_bytes == c_in.payload_bytes == 12
    for s in be.slots:
        assert type(s.inbuf).__name__ == "PynqBuffer" and s.inbuf.physical_address
        assert s.inbuf.nbytes == c_in.payload_bytes and s.outbuf.nbytes == c_out.payload_bytes
        assert s.inbuf.dtype == np.int8
    x = np.linspace(-3, 3, 10)
    be.slots[0].inview[:] = c_in.encode(x)
    be.run_raw(be.slots[0])
    assert np.array_equal(c_out.decode(bytes(be.slots[0].outview)), c_in.decode(c_in.encode(x)))


def test_overlay_raw_words_equal_the_chained_emulation_bit_for_bit(tmp_path):
    from splitting import hls
    from splitting.chain import emulation_runner, run_chain
    from splitting.plan import Plan
    from splitting.reference_models import digits_data, reference_model
    from splitting.split import split_model, write_plan

    plan, models = split_model(reference_model("fc"), at=["fc1", "fc2"])
    write_plan(plan, models, tmp_path / "plan")
    plan = Plan.load(tmp_path / "plan")
    backends = {}
    for name in plan.partitions:
        lib = hls.emulation(plan, name)
        spec = {"accelerator": "emulation", "library": str(Path(lib.library).resolve()), "project": lib.project,
                "n_in": lib.n_in, "n_out": lib.n_out, "in": plan.inputs_of(name)[0].to_dict(),
                "out": plan.outputs_of(name)[0].to_dict(), "log": str(tmp_path / f"{name}.dma.log")}
        backends[name] = _raw_backend(tmp_path, spec, plan, name)
    _, _, x, _ = digits_data()
    x = x[:80].reshape(80, 64)
    ref = run_chain(plan, x, emulation_runner(plan))
    with LocalRack(tmp_path / "rack", env=ENV) as rack:
        wiring = rack.start(plan, backends, in_flight=4)
        with Pipeline(wiring) as pipe:
            out = pipe.stream(x, in_flight=6, timeout=30).outputs()
    np.testing.assert_array_equal(out, ref)  # raw words in, raw words out: no rounding anywhere on the way
    step = plan.output_links[0].step
    assert np.all(out / step == np.round(out / step)) and np.ptp(out) > 0
    for name in plan.partitions:  # each frame went through each partition's DMA once (warm-up included)
        lines = (tmp_path / f"{name}.dma.log").read_text().splitlines()
        assert len(lines) >= 80 and set(lines) == {"%d %d" % (plan.inputs_of(name)[0].payload_bytes,
                                                              plan.outputs_of(name)[0].payload_bytes)}


class _Host:
    """A bare host connection: HELLO with a session, then frames and the replies, read synchronously."""

    def __init__(self, wiring, n_bytes):
        self.sock = connect_agent(wiring, "s0", 10)
        self.session = wire.new_session()
        self.sock.sendall(wire.pack_message(wire.MsgType.HELLO, payload=json.dumps(
            {"role": "host", "session": self.session}).encode()))
        self.reader = wire.Reader(self.sock, max_payload=max(n_bytes, wire.MAX_CONTROL_PAYLOAD))
        self.sock.settimeout(20)
        assert self.reader.message()[0] == wire.MsgType.PONG

    def send(self, n, payload, session=None):
        fid = ((session or self.session) << wire.SESSION_SHIFT) + n
        self.sock.sendall(wire.pack_message(wire.MsgType.FRAME, frame=fid, stage=wire.HOST_STAGE, payload=payload))
        return fid

    def ping(self):
        self.sock.sendall(wire.pack_message(wire.MsgType.PING))
        while True:
            m = self.reader.message()
            if m[0] == wire.MsgType.PONG:
                return json.loads(bytes(m[5]))


def test_overlay_raw_refuses_wrong_sizes_and_drops_old_sessions_before_any_dma(tmp_path):
    plan = identity_plan(1, shape=(64,))
    c = plan.links[0]
    log = tmp_path / "dma.log"
    backend = _raw_backend(tmp_path, {"accelerator": "copy", "log": str(log)}, plan)
    rng = np.random.default_rng(5)
    frames = [c.encode(rng.uniform(-8, 8, 64)) for _ in range(6)]
    with LocalRack(tmp_path / "rack", env=ENV) as rack:
        wiring = rack.start(plan, {"s0": backend})
        host = _Host(wiring, c.payload_bytes)
        got = {}
        for i, p in enumerate(frames[:3]):  # the first ones teach the reader the frame layout
            fid = host.send(i, p)
            m = host.reader.message()
            assert m[0] == wire.MsgType.FRAME and m[1] == fid
            got[fid] = bytes(m[5])
        bad = host.send(10, frames[3][:-2])  # two bytes short
        m = host.reader.message()
        assert m[0] == wire.MsgType.ERROR and m[1] == bad
        assert "payload of %d bytes, contract says %d" % (c.payload_bytes - 2, c.payload_bytes) in json.loads(
            bytes(m[5]))["message"]
        host.send(11, frames[3] + b"\0\0")  # two bytes long
        assert host.reader.message()[0] == wire.MsgType.ERROR
        host.send(12, frames[4], session=host.session ^ 1)  # an old session's frame: dropped silently
        fid = host.send(13, frames[5])
        m = host.reader.message()  # the next message is the good frame's answer, not the old session's
        assert m[0] == wire.MsgType.FRAME and m[1] == fid
        got[fid] = bytes(m[5])
        health = host.ping()
        host.sock.close()
    assert list(got.values()) == [frames[0], frames[1], frames[2], frames[5]]  # the copy accelerator's output
    assert health["counters"]["stale_dropped"] == 1 and health["counters"]["errors"] == 2
    assert health["backend"] == "overlay"
    assert len(log.read_text().splitlines()) == 4  # only the good frames were DMA'd


def test_overlay_raw_frames_through_the_queues_keep_their_own_buffers(tmp_path):
    """Fault injection sends every frame through the compute and send threads (queued with its DMA slot): with
    more frames in flight than queue places, each output is still its own frame's, and a dropped frame gives
    its slot back (the stream goes on past it, many times over the number of slots)."""
    from harness.measure.stream import StreamError

    plan = identity_plan(2, shape=(64,))
    rng = np.random.default_rng(7)
    x = rng.uniform(-8, 8, (150, 64))
    backends = {n: _raw_backend(tmp_path, {"accelerator": "copy"}, plan, n) for n in plan.partitions}
    with LocalRack(tmp_path / "rack", env=ENV) as rack:
        wiring = rack.start(plan, backends, in_flight=2, faults={"s0": {"drop_frames": [7]}, "s1": {"drop_frames": [9]}})
        with Pipeline(wiring) as pipe, pytest.raises(StreamError) as ei:
            pipe.stream(x, in_flight=12, timeout=5)
    res = ei.value.result
    assert len(res.frames) == 148
    c = plan.links[0]
    for i, f in enumerate(res.frame_ids):
        if f in res.frames:
            np.testing.assert_array_equal(res.frames[f].output, c.decode(c.encode(x[i])))


def test_a_raw_frame_queued_for_sending_keeps_its_slot_until_it_left(tmp_path, monkeypatch):
    """In process: a frame computed while another thread sends waits in the send queue with its DMA slot (its
    records copied, as the reader's buffer moves on); the send thread sends that slot's output and frees it.
    A queued frame of an earlier session is dropped and frees its slot too."""
    from harness.agent import agent as agent_mod
    from harness.rack.wiring import agent_config

    monkeypatch.syspath_prepend(str(STANDIN))
    plan = identity_plan(1, shape=(64,))
    c = plan.links[0]
    cfg = agent_config(plan, "s0", {}, _raw_backend(tmp_path, {"accelerator": "copy"}, plan), listen_port=0)
    (tmp_path / "agent.secret").write_text(wire.new_secret().hex())
    ag = agent_mod.Agent(cfg, str(tmp_path))
    ag.load_backend()
    slots = len(ag.free_slots)
    a, b = socket.socketpair()
    ag.host = agent_mod.Conn(a, "test host")
    ag.session = 5
    threading.Thread(target=ag._send_loop, daemon=True).start()
    threading.Thread(target=ag._compute_loop, daemon=True).start()
    frames = [(5 << wire.SESSION_SHIFT) + i for i in range(6)]
    payloads = [c.encode(np.full(64, i + 1.0)) for i in range(6)]
    rec = wire.RECORD.pack(1, 2, 3, 0, 4, 5, 6, 7)
    records = bytearray(rec)
    with ag.send_lock:  # another thread is sending: these frames are computed, then queued for sending
        for f, p in zip(frames, payloads):
            slot = ag.free_slots.pop()
            slot.inview[:] = p
            records[:] = rec
            with ag.compute_lock:  # received while another frame is computed: queued for the compute thread
                ag._advance(f, slot, memoryview(records), (0,))
            records[:] = b"\xff" * 40  # the reader's buffer moves on under the queued frame
        # (the send thread may hold one of them already, waiting for the lock: count states, not the queue)
        queued = lambda: [ag.state.get(f) for f in frames] == ["computed, queued for sending"] * 6
        deadline = time.monotonic() + 10
        while not queued() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert queued() and len(ag.free_slots) == slots - 6, ag.state
        # a frame of another session (queued before a new host attached): dropped, its slot freed
        ag.send_q.put(((6 << wire.SESSION_SHIFT) + 9, ag.free_slots.pop(), b"", (0,), 0, 0))
    reader = wire.Reader(b)
    b.settimeout(10)
    for f, p in zip(frames, payloads):
        m = reader.message()
        assert m[1] == f and bytes(m[5]) == p
        assert bytes(m[4][:40]) == rec  # the records as they were when the frame was queued
    deadline = time.monotonic() + 10
    while len(ag.free_slots) < slots and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(ag.free_slots) == slots and ag.stale_dropped == 1
    ag.send_q.put(None)
    ag.compute_q.put(None)
    a.close()
    b.close()


def test_overlay_raw_runs_on_python38(tmp_path, python38):
    """What a PYNQ image ships: Python 3.8 and numpy 1 (scatter reads, byte views of DMA buffers, sendmsg)."""
    py = python38
    plan = identity_plan(2, shape=(10,), dtype="ap_fixed<8,3>")  # padded last beat
    backends = {n: _raw_backend(tmp_path, {"accelerator": "copy"}, plan, n) for n in plan.partitions}
    x = np.random.default_rng(11).uniform(-4, 4, (40, 10))
    with LocalRack(tmp_path / "rack", python=py, env=ENV) as rack:
        wiring = rack.start(plan, backends)
        with Pipeline(wiring) as pipe:
            assert pipe.ping("s0")["python"].startswith("3.8.")
            out = pipe.stream(x, in_flight=4, timeout=20).outputs()
    c = plan.links[0]
    np.testing.assert_array_equal(out, np.stack([c.decode(c.encode(r)) for r in x]))


def test_a_receiver_without_a_free_slot_waits_for_one_and_gives_up_after_the_part_timeout(tmp_path, monkeypatch):
    from harness.agent import agent as agent_mod
    from harness.rack.wiring import agent_config

    monkeypatch.syspath_prepend(str(STANDIN))
    plan = identity_plan(1, shape=(8,))
    cfg = agent_config(plan, "s0", {}, _raw_backend(tmp_path, {"accelerator": "copy"}, plan), listen_port=0)
    cfg["part_timeout"] = 0.3
    (tmp_path / "agent.secret").write_text(wire.new_secret().hex())
    ag = agent_mod.Agent(cfg, str(tmp_path))
    ag.load_backend()
    taken = [ag.free_slots.pop() for _ in range(len(ag.free_slots))]  # every frame slot is inside the agent
    got = {}
    t = threading.Thread(target=lambda: got.setdefault("slot", ag._take_slot(1)))
    t.start()
    time.sleep(0.05)
    assert t.is_alive()  # waits: back-pressure, not a copy into a buffer the DMA may be reading
    ag._free_slot(taken[3])
    t.join(10)
    assert got["slot"] is taken[3] and ag.slot_waiters == 0
    t0 = time.monotonic()
    assert ag._take_slot(2) is None  # none is freed: reported, not waited for forever
    assert time.monotonic() - t0 >= 0.3 and ag.errors == 1
    assert "no free DMA buffer for frame 2" in json.loads(ag.unreported[0][24:])["message"]  # kept for the host


def test_connections_that_end_give_their_receive_slot_back(tmp_path):
    """A reader waiting for the next frame holds a free slot as its destination; a connection that closes (or
    sends something bad) must give it back: more sessions than slots, one after another, all answered."""
    plan = identity_plan(1, shape=(64,))
    c = plan.links[0]
    backend = _raw_backend(tmp_path, {"accelerator": "copy"}, plan)
    payload = c.encode(np.linspace(-4, 4, 64))
    with LocalRack(tmp_path / "rack", env=ENV) as rack:
        wiring = rack.start(plan, {"s0": backend}, in_flight=1)  # 2 * 1 + 6 = 8 slots
        for i in range(20):
            host = _Host(wiring, c.payload_bytes)
            for k in range(2):  # the second frame is received in place, into a slot the reader took
                fid = host.send(k, payload)
                m = host.reader.message()
                assert m[0] == wire.MsgType.FRAME and m[1] == fid and bytes(m[5]) == payload, (i, m[:2])
            if i % 2:
                host.sock.sendall(b"not a message of ours, " * 4)  # a bad message ends the connection too
            host.sock.close()
        # the agent counts a frame as sent after its send call returns, which may be after the host has read it:
        # the count is awaited (bounded), not raced
        deadline = time.monotonic() + 10
        while True:
            health = _Host(wiring, c.payload_bytes).ping()
            if health["counters"]["sent"] >= 40 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert health["counters"]["errors"] == 0 and health["counters"]["sent"] == 40
