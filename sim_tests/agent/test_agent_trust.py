"""Trust on the data network, second round (issue 24), on local agents over real TCP: each test sets up the
attack or the fault and asserts what the agents and the host do.

- a stranger on a dead agent's port relays the host's (and a neighbour's) handshake to the next agent;
- a crowd of idle strangers re-opening their connections, and a sender of a byte every few seconds;
- a peer that sends what it may not (frames of links it does not produce, control messages, 4096 records);
- an agent that answers with a PONG or an ERROR that is not JSON, not UTF-8, or a list;
- the host's wall clock stepping back an hour during a stream whose frame never comes back.
"""
from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest

from harness.agent import wire
from harness.measure.agent_conn import connect_agent
from harness.measure.stream import AgentUnreachable, Pipeline, StreamError
from harness.rack.local_rack import LocalRack
from identity_plan import identity_plan
from hostile import Crowd, Relay, lying_rack, with_fake

M = wire.MsgType


def test_a_relayed_handshake_is_refused_by_the_next_agent(tmp_path):
    """The agent of s1 is dead; a stranger on its port relays every connection to s2's agent (same secret).
    The host's handshake, meant for s1 at that port, is refused by s2 (its proof is bound to s1's identity),
    and so is s0's when it forwards a frame to s1: the stranger gets no authenticated connection, its PING and
    SHUTDOWN reach nothing, and the host is told why in one line."""
    plan = identity_plan(3, shape=(8,))  # host -> s0 -> s1 -> s2 -> host
    with LocalRack(tmp_path) as rack:
        wiring = rack.start(plan)
        ep1, ep2 = wiring.endpoints["s1"], wiring.endpoints["s2"]
        rack.agents["s1"].proc.kill()
        rack.agents["s1"].proc.wait()
        relay = Relay(ep1.address, ep2.address)
        relay.start()
        try:
            with pytest.raises(AgentUnreachable, match=rf"refused our proof.*not {wiring.plan_hash}/s1@127.0.0.1:{ep1.port}"):
                Pipeline(wiring, connect_timeout=5)
            # a neighbour's handshake: s0 forwards a frame to "s1" (the stranger), who relays it to s2
            host = connect_agent(wiring, "s0", 5)
            host.sendall(wire.pack_message(M.HELLO, payload=json.dumps({"role": "host", "session": 9}).encode()))
            reader = wire.Reader(host)
            host.settimeout(30)
            assert reader.message()[0] == M.PONG
            c = wiring.input_links[0]
            host.sendall(wire.pack_message(M.FRAME, frame=9 << wire.SESSION_SHIFT, stage=wire.HOST_STAGE,
                                           part=c.index, payload=c.encode(np.ones(8))))
            mtype, *_, payload = reader.message()
            assert mtype == M.ERROR
            err = wire.json_object(payload)
            assert "cannot send frame 0 to s1" in err["message"] and "refused our proof" in err["message"], err
            host.close()
        finally:
            relay.close()
        assert relay.relayed >= 2
        assert all(not a.startswith(b"SR") for a in relay.answers), relay.answers  # no PONG ever came back
        # s2 took nothing: it runs, counted the refusals, and answers the real host
        assert rack.agents["s2"].proc.poll() is None
        # s2 sends its refusal before its reading thread counts it: under load the count can trail the peer's
        # error by a moment, so it is read until it shows (or 10 s pass)
        deadline = time.monotonic() + 10
        while True:
            with connect_agent(wiring, "s2", 5) as s:
                s.sendall(wire.pack_message(M.PING, payload=b"{}"))
                h = wire.json_object(wire.Reader(s).message()[5])
            if h["counters"]["refused"] >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert h["counters"]["refused"] >= 2 and h["counters"]["received"] == 0
        assert "meant for another agent" in rack.agents["s2"].log.read_text()


def test_a_crowd_of_idle_strangers_does_not_lock_the_host_out(tmp_path):
    """32 idle connections to every agent, each re-opened within 50 ms of being closed (they used to fill
    every slot, and the run failed in 4.8 s): the host connects and streams every frame."""
    plan = identity_plan(2, shape=(8,))
    with LocalRack(tmp_path) as rack:
        wiring = rack.start(plan)
        crowds = [Crowd(ep.address) for ep in wiring.endpoints.values()]
        for c in crowds:
            c.start()
        try:
            time.sleep(1.0)  # the crowds are in place
            with Pipeline(wiring, connect_timeout=20) as pipe:
                res = pipe.stream(np.ones((200, 8)), in_flight=4, timeout=20)
                h = pipe.ping("s1")
        finally:
            for c in crowds:
                c.halt.set()
                c.join(10)
        assert res.complete and len(res.frames) == 200
        assert all(c.opened >= 32 for c in crowds)
        assert h["counters"]["refused"] > 0  # the crowd was there, and pushed out


def test_a_byte_every_few_seconds_does_not_keep_a_connection(tmp_path, sched_latency):
    """A stranger sends a byte of its 'proof' every 0.9 s to an agent whose auth_timeout is 2 s: the
    handshake's deadline is for all of it, so the connection is closed 2 s after it opened (it used to live
    as long as bytes kept coming, each read getting a fresh timeout)."""
    plan = identity_plan(1, shape=(8,))
    with LocalRack(tmp_path) as rack:
        rack.start(plan)
        rack.agents["s0"].config = dict(rack.agents["s0"].config, auth_timeout=2.0)
        rack.restart("s0")
        address = rack.wiring.endpoints["s0"].address
        s = socket.create_connection(address, timeout=5)
        t0 = time.monotonic()
        assert len(wire.recv_exact(s, 24)) == 24
        closed_at = None
        for _ in range(20):
            try:
                s.send(b"x")
            except OSError:
                closed_at = time.monotonic()
                break
            s.settimeout(0.9)
            try:
                if s.recv(64) == b"":
                    closed_at = time.monotonic()
                    break
            except socket.timeout:
                pass
        s.close()
        assert closed_at is not None, "still open after 18 s"
        took = closed_at - t0
        assert 2.0 - 0.05 <= took <= sched_latency.bound(2.0 + 0.9, 10), took


def test_a_peer_may_send_only_what_its_role_allows(tmp_path):
    """Authenticated with the deployment's secret, each peer is still held to its role: the host sends no
    frames into a middle stage (only s0 produces s1's link), a producer sends no control message, and a
    frame whose header announces more records than the plan's paths carry is refused before it is read."""
    plan = identity_plan(3, shape=(8,))
    with LocalRack(tmp_path) as rack:
        wiring = rack.start(plan)
        ep = wiring.endpoints["s1"]
        c = plan.inputs_of("s1")[0]
        as_s0 = lambda: wire.connect(ep.address, wiring.secret, 5, wiring.agent_id("s1"),
                                     wire.peer_id(wiring.plan_hash, "s0"))
        cases = {
            "host sends a frame into s1": (connect_agent(wiring, "s1", 5), wire.pack_message(
                M.FRAME, frame=0, stage=0, part=c.index, payload=c.encode(np.ones(8)))),
            "s0 sends SHUTDOWN": (as_s0(), wire.pack_message(M.SHUTDOWN)),
            "s0 announces 4096 records": (as_s0(), wire.pack_message(
                M.FRAME, frame=0, stage=0, part=c.index, payload=c.encode(np.ones(8)), records=b"\0" * 40 * 4096)),
        }
        for what, (s, msg) in cases.items():
            s.settimeout(10)
            s.sendall(msg)
            assert s.recv(4096) == b"", what  # closed, nothing answered
            s.close()
        log = rack.agents["s1"].log.read_text()
        assert "produces none of this agent's links" in log and "only the host sends control messages" in log
        assert "announces" in log and "4096 records" in log
        assert rack.agents["s1"].proc.poll() is None
        with Pipeline(wiring) as pipe:  # the agents serve the host as before
            assert pipe.stream(np.ones((5, 8))).complete


GOOD = json.dumps({"partition": "s1"}).encode()


@pytest.mark.parametrize("hello,words", [(b"\xff\xfe\x00junk", "not JSON"), (b"{not json", "not JSON"),
                                         (b"[1, 2, 3]", "not a JSON object"), (b"[" * 5000 + b"]" * 5000, "not JSON")],
                         ids=["not-utf8", "not-json", "a-list", "nested-5000"])
def test_a_pong_the_host_cannot_read_is_one_line(tmp_path, hello, words):
    rack, wiring, fake = with_fake(tmp_path, "s1", hello)
    try:
        with pytest.raises(AgentUnreachable, match=words) as e:
            Pipeline(wiring, connect_timeout=5)
        assert "s1 on board" in str(e.value) and "\n" not in str(e.value)
    finally:
        fake.close()
        rack.stop()


def test_an_error_that_is_not_json_ends_the_stream_at_once_naming_it(tmp_path, sched_latency):
    """The last agent answers the first frame with an ERROR whose payload is not JSON. The host's reader
    names the protocol error and the stream ends at once (it used to lose its reader thread without a word,
    and blame a frame that 'did not come back' when the timeout passed)."""
    bad = wire.pack_message(M.ERROR, payload=b"\x80\x81 not json")
    rack, wiring, fake = with_fake(tmp_path, "s1", GOOD, then=bad)
    try:
        with Pipeline(wiring, connect_timeout=5) as pipe:
            t0 = time.monotonic()
            with pytest.raises(StreamError) as e:
                pipe.stream(np.ones((3, 8)), timeout=20)
            took = time.monotonic() - t0
        msg = str(e.value)
        assert "protocol error: an ERROR message is not JSON" in msg and "s1 on board" in msg, msg
        assert took < sched_latency.bound(0.5, 20), took  # at once: the agent gone is the one that sends the outputs
    finally:
        fake.close()
        rack.stop()


def test_the_frame_timeout_holds_when_the_hosts_wall_clock_steps_back(tmp_path, monkeypatch, sched_latency):
    """A frame is dropped in the rack; right after the frames leave, the host's wall clock steps back an hour.
    The stream still fails after its 2 s timeout, naming the frame (deadlines run on the monotonic clock; on
    the wall clock the timeout never fired)."""
    import harness.measure.stream as stream

    plan = identity_plan(2, shape=(8,))
    with LocalRack(tmp_path) as rack:
        wiring = rack.start(plan, faults={"s1": {"drop_frames": [3]}})
        real = time.time_ns
        step = {"at": None}

        def stepped():  # an hour back, from the moment the last frame has been sent
            t = real()
            return t - 3600 * 10 ** 9 if step["at"] is not None else t

        with Pipeline(wiring) as pipe:
            orig_send = pipe._send_frame

            def send_then_step(run, fid, parts):
                ok = orig_send(run, fid, parts)
                if fid == 4:
                    step["at"] = time.monotonic()
                return ok

            monkeypatch.setattr(pipe, "_send_frame", send_then_step)
            monkeypatch.setattr(stream.time, "time_ns", stepped)
            t0 = time.monotonic()
            with pytest.raises(StreamError, match="frame 3 did not come back within 2 s"):
                pipe.stream(np.ones((5, 8)), in_flight=5, timeout=2.0)
            took = time.monotonic() - t0
        assert step["at"] is not None and took <= sched_latency.bound(2.0 + 1.0, 40), took


def test_a_board_dwell_of_minus_1e15_us_makes_a_run_untrusted_exit_2(tmp_path):
    """Every output right, every stamp of s1 impossible (it sends 1e15 us before it receives): `run` writes
    run.json with every frame, marked untrusted with the reason and never complete, and fails (RunError: a
    UserError, exit status 2); `history add` keeps it as an incomplete run."""
    from harness.jobs.run import RunError, run_frames
    from harness.results.history import load_file
    from splitting.errors import UserError

    plan, rack, wiring, fake = lying_rack(tmp_path / "rack", stamps=lambda t: (t, t, t, t - 10 ** 18))
    try:
        x = np.random.default_rng(0).uniform(-8, 8, (20, 8))
        with pytest.raises(RunError) as e:
            run_frames(plan, wiring, x, None, tmp_path / "out", "local agents", check=False, progress=lambda s: None)
    finally:
        fake.close()
        rack.stop()
    assert isinstance(e.value, UserError) and "untrusted: 20 of 20 frames have impossible board stamps" in str(e.value)
    doc = json.loads((tmp_path / "out" / "run.json").read_text())
    s = doc["summary"]
    assert s["complete"] is False and s["untrusted"].startswith("untrusted:") and len(doc["frames"]) == 20
    assert "s1 on local-s1: its stamps are out of order" in s["untrusted"]
    (run, _, _), = load_file(tmp_path / "out" / "run.json")
    assert not run.complete and run.error.startswith("untrusted:")


def test_a_clock_probe_an_hour_ahead_makes_a_bench_untrusted(tmp_path):
    """The board's stamps are true, but its clock probes answer an hour ahead: mapped with that offset its
    stamps fall an hour before the host sent the frames (links of -3.6e9 us). The run's figures are refused:
    untrusted, with the reason, and no report attributed from them."""
    from harness.measure import attribution as measure

    plan, rack, wiring, fake = lying_rack(tmp_path, stamps=lambda t: (t, t + 1000, t + 2000, t + 3000),
                                           probe_ahead_ns=3600 * 10 ** 9)
    try:
        with Pipeline(wiring) as pipe:
            run = measure.measure_rack(pipe, wiring, plan, np.ones((10, 8)), probes=16, single_rate=200.0)
    finally:
        fake.close()
        rack.stop()
    assert run.untrusted.startswith("untrusted: 20 of 20 frames") and "before the host sent" in run.untrusted
    assert run.reports == {}


def test_a_frame_to_the_host_with_more_records_than_the_plan_is_refused(tmp_path):
    """4096 records on a frame of a 2-stage chain (which carries 2): the host's reader refuses the header
    before reading the records, and the stream ends naming the protocol error (it used to spend 0.6-0.8 s of
    CPU per such frame)."""
    plan, rack, wiring, fake = lying_rack(tmp_path, stamps=lambda t: (t, t, t, t), extra_records=4095)
    try:
        with Pipeline(wiring) as pipe:
            with pytest.raises(StreamError, match="announces .* 4097 records .* allows .* and 2"):
                pipe.stream(np.ones((3, 8)), timeout=10)
    finally:
        fake.close()
        rack.stop()


def test_what_an_agent_remembers_of_frames_stays_bounded_and_keeps_the_latest(tmp_path):
    """The per-frame states an agent keeps (for a host asking where a frame was last seen) are the latest
    8192 frames, an entry dropped as one comes: memory flat once full (benchmarks/soak.py shows the agents'),
    not a dict trimmed by half that swung it."""
    from harness.agent.agent import Agent
    from harness.rack.wiring import agent_config

    plan = identity_plan(1, shape=(8,))
    (tmp_path / "agent.secret").write_text(wire.new_secret().hex() + "\n")
    ag = Agent(agent_config(plan, "s0", {}, {"kind": "passthrough"}, listen_port=0), str(tmp_path))
    for f in range(20_000):
        ag._set_state(f, "sent")
    assert len(ag.state) == 8192 and next(iter(ag.state)) == 20_000 - 8192 and ag.state[19_999] == "sent"
