"""Hostile and broken peers of the board agents, for tests and benchmarks (never shipped, never imported by
the library): a stranger who relays connections from a dead agent's port, a crowd of idle connections, and
boards of a deployment (they have its secret) that answer with bytes of their choosing or lie about time.
Used by sim_tests/agent/test_agent_trust.py and benchmarks/protocol_faults.py."""
from __future__ import annotations

import json
import socket
import threading
import time

from harness.agent import wire
from harness.rack.local_rack import LocalRack
from identity_plan import identity_plan

M = wire.MsgType


class Relay(threading.Thread):
    """A stranger listening on `listen` (a dead agent's port) that relays every connection to `to` (another
    agent of the same deployment), byte for byte, and once the handshake's bytes have passed, injects a PING
    and a SHUTDOWN towards `to` as if it were the authenticated peer."""

    def __init__(self, listen, to):
        super().__init__(daemon=True)
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(listen)
        self.srv.listen(8)
        self.to = to
        self.relayed = 0
        self.answers = []  # what came back to the injected messages

    def run(self):
        while True:
            try:
                a, _ = self.srv.accept()
            except OSError:
                return
            threading.Thread(target=self._pump, args=(a,), daemon=True).start()

    def _pump(self, a):
        b = socket.create_connection(self.to, timeout=5)
        self.relayed += 1
        a.settimeout(5)
        b.settimeout(5)
        try:
            challenge = wire.recv_exact(b, 24)
            a.sendall(challenge)
            b.sendall(wire.recv_exact(a, 48))
            a.sendall(wire.recv_exact(b, 32))  # the agent's answer (a proof, or REFUSED), passed on
            b.sendall(wire.pack_message(M.PING, payload=b"{}") + wire.pack_message(M.SHUTDOWN))
            self.answers.append(b.recv(4096))
        except (OSError, EOFError) as e:
            self.answers.append(repr(e).encode())
        finally:
            a.close()
            b.close()

    def close(self):
        self.srv.close()


class Crowd(threading.Thread):
    """`n` idle connections to `address`, each re-opened 50 ms after the agent closes it."""

    def __init__(self, address, n=32):
        super().__init__(daemon=True)
        self.address, self.n = address, n
        self.halt = threading.Event()
        self.opened = 0

    def run(self):
        socks = []
        while not self.halt.is_set():
            while len(socks) < self.n:
                try:
                    socks.append(socket.create_connection(self.address, timeout=2))
                    self.opened += 1
                except OSError:
                    break
            alive = []
            for s in socks:
                try:
                    s.setblocking(False)
                    closed = s.recv(4096, socket.MSG_PEEK) == b""
                except BlockingIOError:
                    closed = False
                except OSError:
                    closed = True
                if closed:
                    s.close()
                else:
                    alive.append(s)
            socks = alive
            self.halt.wait(0.05)
        for s in socks:
            s.close()


class FakeAgent(threading.Thread):
    """A board that answers in bytes of its choosing: it authenticates as the agent of `name` (it has the
    secret: a buggy or hostile board of this deployment), answers HELLO with `hello`, and then sends
    `then` (raw bytes) once the first frame arrives."""

    def __init__(self, wiring, name, hello: bytes, then: bytes = b""):
        super().__init__(daemon=True)
        self.wiring, self.name, self.hello, self.then = wiring, name, hello, then
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(wiring.endpoints[name].address)
        self.srv.listen(4)

    def run(self):
        while True:
            try:
                s, _ = self.srv.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        w = self.wiring
        peers = {w.host_id(): "host"}
        peers.update((wire.peer_id(w.plan_hash, c.src), c.src) for c in self._inputs() if c.src != "host")
        try:
            wire.agent_handshake(s, w.secret, 5, w.agent_id(self.name), peers)
            r = wire.Reader(s)
            while True:
                mtype = r.message()[0]
                if mtype == M.HELLO:
                    self.host = s
                    s.sendall(wire.pack_message(M.PONG, payload=self.hello))
                elif mtype == M.FRAME and self.then:
                    self.host.sendall(self.then)  # to the host, as an agent reports an error
                elif mtype == M.PING:
                    s.sendall(wire.pack_message(M.PONG, payload=b"{}"))
        except (OSError, EOFError, wire.ProtocolError, AttributeError):
            pass

    def _inputs(self):
        from splitting.contract import Contract

        return [Contract.from_dict(c) for c in self.wiring.configs[self.name]["inputs"]]

    def close(self):
        self.srv.close()


def with_fake(tmp_path, name, hello, then=b""):
    plan = identity_plan(2, shape=(8,))
    rack = LocalRack(tmp_path)
    wiring = rack.start(plan)
    rack.agents[name].proc.kill()
    rack.agents[name].proc.wait()
    fake = FakeAgent(wiring, name, hello, then)
    fake.start()
    return rack, wiring, fake


class LyingAgent(FakeAgent):
    """The last stage of an identity chain, played by a board that computes right (its output is its input,
    as the passthrough agent's) and lies about time: `stamps(t_now)` gives its record's four stamps, and its
    clock probes answer `probe_ahead_ns` ahead of its real clock."""

    def __init__(self, wiring, name, stamps, probe_ahead_ns=0, extra_records=0):
        super().__init__(wiring, name, b"{}")
        self.stamps, self.ahead, self.extra = stamps, probe_ahead_ns, extra_records
        self.host = None

    def _serve(self, s):
        w = self.wiring
        peers = {w.host_id(): "host"}
        peers.update((wire.peer_id(w.plan_hash, c.src), c.src) for c in self._inputs() if c.src != "host")
        ids = w.partition_ids
        try:
            role = wire.agent_handshake(s, w.secret, 5, w.agent_id(self.name), peers)
            r = wire.Reader(s, max_payload=1 << 20)
            while True:
                mtype, frame, stage, part, records, payload = r.message()
                if mtype == M.HELLO:
                    self.host = s
                    s.sendall(wire.pack_message(M.PONG, payload=json.dumps({"partition": self.name}).encode()))
                elif mtype == M.PING:
                    s.sendall(wire.pack_message(M.PONG, payload=json.dumps({"partition": self.name}).encode()))
                elif mtype == M.PROBE:
                    (t1,) = wire.PROBE_REQ.unpack(payload)
                    t = time.time_ns() + self.ahead
                    s.sendall(wire.pack_message(M.PROBE_REPLY, payload=wire.PROBE_REP.pack(t1, t, t + 1000)))
                elif mtype == M.FRAME and role != "host":
                    own = wire.RECORD.pack(w.stages[self.name], ids[self.name], ids[role], 0,
                                           *self.stamps(time.time_ns()))
                    recs = bytes(records) + own + own * self.extra
                    self.host.sendall(wire.pack_message(M.FRAME, frame=frame, stage=w.stages[self.name], part=0,
                                                        payload=bytes(payload), records=recs))
        except (OSError, EOFError, wire.ProtocolError, AttributeError):
            pass


def lying_rack(tmp_path, **lie):
    plan = identity_plan(2, shape=(8,))
    rack = LocalRack(tmp_path)
    wiring = rack.start(plan)
    rack.agents["s1"].proc.kill()
    rack.agents["s1"].proc.wait()
    fake = LyingAgent(wiring, "s1", **lie)
    fake.start()
    return plan, rack, wiring, fake
