"""The agents as a secure instrument: strangers on the data network cannot stop, abort, steal or poison a
stream, and earlier sessions cannot leak into later ones (local agent processes, real TCP on loopback)."""
import json
import re
import socket
import struct
import threading
import time

import numpy as np
import pytest

from harness.agent import wire
from harness.rack.local_rack import LocalRack
from identity_plan import identity_plan
from harness.measure.agent_conn import connect_agent
from harness.measure.stream import AgentUnreachable, Pipeline, StreamError
from splitting.contract import Contract

DTYPE = "ap_fixed<16,6>"
M = wire.MsgType


def _expected(plan, x):
    c = Contract("host", "host", plan.model["input_shape"], plan.links[0].dtype)
    return np.stack([c.decode(c.encode(v)) for v in x])


def _send_raw(address, data, read=False):
    """A stranger: connect, send bytes, maybe read what comes back, close. Returns what was read."""
    try:
        with socket.create_connection(address, timeout=2) as s:
            s.sendall(data)
            if read:
                s.settimeout(2)
                got = b""
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        return got
                    got += chunk
    except OSError:
        pass
    return b""


def _attacks(address, session_base, payload_bytes):
    """Everything a hostile neighbour tried against an unauthenticated agent, as raw byte strings."""
    hdr = struct.Struct("<2sBBqHHIH2x")
    forged = b"".join(wire.pack_message(M.FRAME, frame=session_base | i, stage=wire.HOST_STAGE,
                                        payload=b"\x7f" * payload_bytes) for i in range(50))
    return [
        wire.pack_message(M.SHUTDOWN),  # the 24-byte stop
        bytes(range(64)),  # junk
        wire.pack_message(M.HELLO, payload=json.dumps({"role": "host", "session": session_base >> 40}).encode()),
        hdr.pack(b"SR", wire.VERSION, M.FRAME, 0, 0, 0, 64 << 20, 0) + b"\0" * 4096,  # announces 64 MiB
        hdr.pack(b"SR", 1, M.FRAME, 0, 0, 0, 64 << 20, 0),  # the old wire version's 64 MiB header
        forged,  # frames with the session's own ids (as if its tag had leaked)
        wire.pack_message(M.SHUTDOWN) * 40,  # more than the handshake's 48 bytes
    ]


class Stranger(threading.Thread):
    """Sends every attack to every agent, over and over, until stopped; also holds a crowd of idle
    connections and tries a handshake with a wrong secret."""

    def __init__(self, wiring, session_base, payload_bytes):
        super().__init__(daemon=True)
        self.wiring = wiring
        self.base = session_base
        self.payload_bytes = payload_bytes
        self.halt = threading.Event()
        self.rounds = 0
        self.wrong_secret_refused = 0

    def run(self):
        crowd = []
        while not self.halt.is_set():
            for name, ep in self.wiring.endpoints.items():
                for data in _attacks(ep.address, self.base, self.payload_bytes):
                    threading.Thread(target=_send_raw, args=(ep.address, data), daemon=True).start()
                try:
                    wire.connect(ep.address, wire.new_secret(), 2, self.wiring.agent_id(name),
                                 self.wiring.host_id()).close()
                except wire.AuthError:
                    self.wrong_secret_refused += 1
                except OSError:
                    pass
                if len(crowd) < 60:  # idle connections that never authenticate (more than the agents' cap)
                    try:
                        crowd.append(socket.create_connection(ep.address, timeout=2))
                    except OSError:
                        pass
            self.rounds += 1
            self.halt.wait(0.05)
        for s in crowd:
            s.close()


@pytest.mark.timeout(300)
def test_stream_completes_exactly_while_a_stranger_attacks_every_agent(tmp_path):
    plan = identity_plan(2, shape=(4, 12), dtype=DTYPE, fan=3)  # s0 -> n0..n2 -> join -> s1
    x = np.random.default_rng(11).uniform(-40, 40, (1500, 4, 12))
    with LocalRack(tmp_path) as rack:
        wiring = rack.start(plan, {n: {"kind": "passthrough", "decode": True} for n in plan.partitions})
        with Pipeline(wiring) as pipe:
            stranger = Stranger(wiring, pipe._base, plan.links[0].payload_bytes)
            stranger.start()
            try:
                time.sleep(0.5)  # the attacks are under way before the first frame
                res = pipe.stream(x, in_flight=8, rate=500, timeout=20)
            finally:
                stranger.halt.set()
                stranger.join(timeout=30)
            np.testing.assert_array_equal(res.outputs(), _expected(plan, x))
            assert res.complete and not res.errors and not pipe.agent_errors
            assert stranger.rounds >= 3 and stranger.wrong_secret_refused >= 1
            health = {n: pipe.ping(n) for n in plan.partitions}
        for name, h in health.items():
            assert h["counters"]["refused"] > 0, name  # the attacks reached every agent and were refused
            assert h["counters"]["stale_dropped"] == 0 and h["counters"]["errors"] == 0, (name, h["counters"])
            assert rack.agents[name].proc.poll() is None, f"{name} stopped"
            log = rack.agents[name].log.read_text()
            assert "Traceback" not in log
            # one line per refusal at most, rate-limited: hundreds of attacks, a bounded log
            assert len(re.findall(r"WARNING", log)) < 12 * (1 + stranger.rounds // 50), name


def test_an_unauthenticated_connection_is_refused_before_anything_is_read(tmp_path):
    plan = identity_plan(1, shape=(8,))
    with LocalRack(tmp_path) as rack:
        wiring = rack.start(plan)
        address = wiring.endpoints["s0"].address
        # SHUTDOWNs, a HELLO and a frame, as a stranger's first bytes: the agent sends its challenge, reads
        # the 48 bytes of a proof, finds it wrong and closes; none of these messages is acted on
        attack = (wire.pack_message(M.SHUTDOWN) * 2
                  + wire.pack_message(M.HELLO, payload=b'{"role": "host", "session": 5}')
                  + wire.pack_message(M.FRAME, frame=5 << 40, stage=wire.HOST_STAGE, payload=b"\0" * 16))
        got = _send_raw(address, attack, read=True)
        assert got[:len(wire.AUTH_MAGIC)] == wire.AUTH_MAGIC
        # the challenge, then the refusal of the proof, then nothing: closed
        assert got[len(wire.AUTH_MAGIC) + wire.NONCE_BYTES:] == wire.REFUSED
        with pytest.raises(AgentUnreachable, match="another secret"):  # a host of another deployment
            Pipeline(type(wiring)(**{**wiring.__dict__, "secret": wire.new_secret()}), connect_timeout=3)
        with Pipeline(wiring) as pipe:  # still there, nothing of the attack taken in
            h = pipe.ping("s0")
            assert h["counters"]["received"] == 0 and h["counters"]["refused"] == 2
            assert h["session"] == pipe.session
            res = pipe.stream(np.ones((5, 8)))
            assert res.complete
        assert rack.agents["s0"].proc.poll() is None
        assert "refused at authentication" in rack.agents["s0"].log.read_text()


def test_three_sessions_after_an_abandoned_one_get_every_frame_right(tmp_path):
    """A host sends 300 frames into a slow chain and goes away: they sit in the agents' queues and sockets.
    Each later session uses the same frame numbers (0..49) on other data: every output must be its own."""
    plan = identity_plan(3, shape=(32,), dtype=DTYPE)
    with LocalRack(tmp_path) as rack:
        wiring = rack.start(plan, timing={"cycles": 100_000, "clock_mhz": 100}, in_flight=8)  # 1 ms a frame
        c = wiring.input_links[0]
        abandoned = connect_agent(wiring, "s0", 5)
        tag = wire.new_session()
        hellos = {}
        for name in wiring.endpoints:  # the old host had its session open on every agent
            s = abandoned if name == "s0" else connect_agent(wiring, name, 5)
            s.sendall(wire.pack_message(M.HELLO, payload=json.dumps({"role": "host", "session": tag}).encode()))
            assert wire.Reader(s).message()[0] == M.PONG
            hellos[name] = s
        old = np.full(32, 7.0)
        blob = b"".join(wire.pack_message(M.FRAME, frame=(tag << 40) | i, stage=wire.HOST_STAGE,
                                          payload=c.encode(old)) for i in range(300))
        abandoned.setblocking(False)
        try:
            abandoned.send(blob)  # as much as the sockets take; the rest never leaves
        except BlockingIOError:
            pass
        for s in hellos.values():
            s.close()
        stale = 0
        for k in range(3):
            x = np.random.default_rng(20 + k).uniform(-30, 30, (50, 32))
            with Pipeline(wiring) as pipe:
                res = pipe.stream(x, in_flight=8, timeout=20)
                assert res.frame_ids == list(range(50))
                np.testing.assert_array_equal(res.outputs(), _expected(plan, x))
                stale = sum(pipe.ping(n)["counters"]["stale_dropped"] for n in plan.partitions)
        assert stale > 0  # frames of the abandoned session were there, and were dropped


def test_ping_says_whether_an_agent_holds_state_of_a_session(tmp_path):
    """deploy restarts an agent that holds state of a session (PONG's `stale`); `idle`: that and no host."""
    plan = identity_plan(1, shape=(8,))
    with LocalRack(tmp_path) as rack:
        wiring = rack.start(plan)
        with Pipeline(wiring) as pipe:
            pipe.stream(np.ones((3, 8)))
            assert pipe.ping("s0")["idle"] is False  # this host is attached
        deadline = time.monotonic() + 10
        while True:
            s = connect_agent(wiring, "s0", 5)
            s.sendall(wire.pack_message(M.PING, payload=b"{}"))
            h = json.loads(bytes(wire.Reader(s).message()[5]).decode())
            s.close()
            if h["idle"] or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert h["idle"] is True and h["host_attached"] is False and h["stale"] is False
    # a frame whose other part never came, left waiting at the join: stale state, named
    plan = identity_plan(1, shape=(8,), fan=2)  # s0 -> n0, n1 -> join -> host
    with LocalRack(tmp_path / "fan") as rack:
        wiring = rack.start(plan, faults={"n1": {"drop_frames": [0]}})
        with Pipeline(wiring) as pipe:
            with pytest.raises(StreamError):
                pipe.stream(np.ones((1, 8)), timeout=1)
            h = pipe.ping("join")
        assert h["stale"] == "1 frame(s) waiting for parts" and h["idle"] is False


def test_accept_survives_running_out_of_file_descriptors(tmp_path, sched_latency):
    """A crowd of connections beyond the agent's descriptor limit: accept fails with EMFILE, says so in its
    log, sheds what it cannot serve, and serves the host once the crowd is gone."""
    import os
    import resource

    plan = identity_plan(1, shape=(8,))
    with LocalRack(tmp_path) as rack:
        rack.start(plan)
        rack.agents["s0"].config = dict(rack.agents["s0"].config, max_connections=1000)  # the fd limit comes first
        rack.restart("s0")
        wiring = rack.wiring
        pid = rack.agents["s0"].proc.pid
        n_open = len(os.listdir(f"/proc/{pid}/fd"))
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (n_open + 6, n_open + 6))
        log = rack.agents["s0"].log
        # the crowd grows until the agent runs out: on a busy machine the agent may have closed the first
        # ones (unauthenticated, after auth_timeout) before it ever ran out, so a fixed crowd can fall short
        crowd = []
        deadline = time.monotonic() + sched_latency.bound(20.0, 400)
        while "accept failed" not in log.read_text():
            assert time.monotonic() < deadline, "accept never ran out of descriptors"
            try:
                crowd.append(socket.create_connection(wiring.endpoints["s0"].address, timeout=2))
            except OSError:
                time.sleep(0.05)
        for s in crowd:
            s.close()
        with Pipeline(wiring, connect_timeout=20) as pipe:
            res = pipe.stream(np.ones((10, 8)), timeout=10)
        assert res.complete
        assert rack.agents["s0"].proc.poll() is None
        assert "Too many open files" in log.read_text()


def test_the_host_keeps_the_secret_0600_outside_the_plan_folder(tmp_path, monkeypatch):
    from harness.rack.wiring import Wiring, WiringError, secret_path

    monkeypatch.setenv("SPLITRACK_STATE", str(tmp_path / "state"))
    plan = identity_plan(1, shape=(8,))
    with LocalRack(tmp_path / "rack") as rack:
        wiring = rack.start(plan)
    assert oct((tmp_path / "rack" / "s0" / "agent.secret").stat().st_mode & 0o777) == "0o600"
    (tmp_path / "plan").mkdir()
    path = wiring.save(tmp_path / "plan" / "wiring.json")
    assert wiring.secret.hex() not in path.read_text()
    key = secret_path(path)
    assert tmp_path / "plan" not in key.parents and oct(key.stat().st_mode & 0o777) == "0o600"
    assert Wiring.load(path).secret == wiring.secret
    key.unlink()
    with pytest.raises(WiringError, match="no secret for the deployment"):
        Wiring.load(path)
