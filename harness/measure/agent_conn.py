"""The host's authenticated connection to one agent of a wired rack (`connect_agent`), and the session's
connection (`AgentConn`): HELLO, then a reader thread that hands results, errors and replies to its Pipeline."""
from __future__ import annotations

import json
import queue
import socket
import threading
import time
from typing import Any, Tuple

from harness.agent import wire
from harness.agent.wire import MsgType
from harness.rack.wiring import Wiring
from splitting.errors import UserError

FRAME = int(MsgType.FRAME)  # per frame: a plain int compares faster than an IntEnum member


class AgentUnreachable(UserError):
    """An agent that does not accept connections or does not answer."""


class AgentConn:
    """The host's connection to one agent, in a Pipeline's session (`pipe`: its wiring and session tag, and
    where results, errors and a lost connection go): authenticated, opened by HELLO, and a reader thread
    dispatching results, errors and replies."""

    def __init__(self, pipe: "Pipeline", name: str, connect_timeout: float):
        self.pipe = pipe
        self.name = name
        ep = pipe.wiring.endpoints[name]
        self.sock = connect_agent(pipe.wiring, name, connect_timeout)
        w = pipe.wiring
        max_payload = max([c.payload_bytes for c in w.output_links] + [wire.MAX_CONTROL_PAYLOAD])
        # an agent's frames to the host carry the records of the plan's paths through it, and no more: a header
        # announcing more is refused before anything is read (other agents send the host no frames at all)
        sends_out = any(c.src == name for c in w.output_links)
        self.reader = wire.Reader(self.sock, max_payload=max_payload,
                                  max_records=w.records_to_host() if sends_out else 0)
        self.wlock = threading.Lock()
        self.replies: "queue.Queue[Tuple[int, Any]]" = queue.Queue()
        self.alive = True
        # HELLO opens the session; the agent answers once it has dropped what earlier sessions left, and only
        # then may frames of this session arrive at it from its neighbours
        hello = json.dumps({"role": "host", "session": pipe.session}).encode()
        self.send(wire.pack_message(MsgType.HELLO, payload=hello))
        self.sock.settimeout(connect_timeout)
        try:
            mtype, *_, payload = self.reader.message()
        except (OSError, EOFError, wire.ProtocolError) as e:
            self.close()
            raise AgentUnreachable(f"agent of {pipe.wiring.describe(name)} did not answer the session's HELLO "
                                   f"({e or type(e).__name__}): check its log on the board") from None
        self.sock.settimeout(None)
        if mtype != MsgType.PONG:
            self.close()
            raise AgentUnreachable(f"agent of {pipe.wiring.describe(name)} answered HELLO with message type "
                                   f"{mtype}: redeploy (`splitrack deploy`)")
        try:
            self.hello = wire.json_object(payload, "its answer to HELLO")
        except wire.ProtocolError as e:
            self.close()
            raise AgentUnreachable(f"agent of {pipe.wiring.describe(name)}: {e}: redeploy (`splitrack deploy`)") from None
        self.thread = threading.Thread(target=self._read_loop, name=f"host<-{name}", daemon=True)
        self.thread.start()

    def send(self, data: bytes) -> None:
        with self.wlock:
            self.sock.sendall(data)

    def _read_loop(self) -> None:
        why = "closed by the agent"
        try:
            while True:
                mtype, frame, stage, part, records, payload = self.reader.message()
                t = time.time_ns()
                # what a board sends is untrusted input: a message this side cannot read ends this connection
                # with a ProtocolError naming it (below), never the reader thread without a word
                if mtype == FRAME:
                    self.pipe._on_output(self.name, frame, part, records, payload, t)
                elif mtype == MsgType.ERROR:
                    self.pipe._on_error(self.name, wire.json_object(payload, "an ERROR message"))
                elif mtype == MsgType.PROBE_REPLY:
                    if len(payload) != wire.PROBE_REP.size:
                        raise wire.ProtocolError(f"a PROBE_REPLY of {len(payload)} bytes, not {wire.PROBE_REP.size}")
                    t1, t2, t3 = wire.PROBE_REP.unpack(payload)
                    self.replies.put((mtype, (t1, t2, t3, t)))
                elif mtype == MsgType.PONG:
                    self.replies.put((mtype, wire.json_object(payload, "a PONG")))
                else:
                    raise wire.ProtocolError(f"message type {mtype}, which an agent never sends the host")
        except (EOFError, OSError) as e:
            why = str(e) or type(e).__name__
        except wire.ProtocolError as e:
            why = f"protocol error: {e}"
        except Exception as e:  # a bug on this side: still one line naming it, never a silent reader thread
            why = f"the host could not handle its message ({type(e).__name__}: {e})"
        self.alive = False
        self.pipe._on_lost(self.name, why)

    def request(self, mtype: int, payload: bytes, want: int, timeout: float):
        # drop stale replies of an earlier request that timed out
        while not self.replies.empty():
            self.replies.get_nowait()
        self.send(wire.pack_message(mtype, payload=payload))
        deadline = time.monotonic() + timeout
        while True:
            try:
                got, value = self.replies.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AgentUnreachable(f"agent of {self.pipe.wiring.describe(self.name)} did not answer within {timeout} s") from None
            if got == want:
                return value

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def connect_agent(wiring: Wiring, name: str, timeout: float = 10.0) -> socket.socket:
    """An authenticated connection to a partition's agent (retried until `timeout` while it starts).
    Raises AgentUnreachable (not listening, or it does not share this deployment's secret)."""
    ep = wiring.endpoints[name]
    if wiring.secret is None:
        raise AgentUnreachable(f"no secret for the agents of plan {wiring.plan_hash}: they answer only the deployment "
                               "that started them; deploy the plan (`splitrack deploy`)")
    deadline = time.monotonic() + timeout
    while True:
        try:
            return wire.connect((ep.host, ep.port), wiring.secret, timeout, wiring.agent_id(name), wiring.host_id())
        except wire.AgentShed as e:  # an agent under a crowd sheds connections for a while: retry
            if time.monotonic() > deadline:
                raise AgentUnreachable(f"agent of {wiring.describe(name)} at {ep.host}:{ep.port}: {e}") from None
            time.sleep(0.05)
        except wire.AuthError as e:
            raise AgentUnreachable(f"agent of {wiring.describe(name)} at {ep.host}:{ep.port}: {e}") from None
        except (OSError, EOFError) as e:
            if time.monotonic() > deadline:
                raise AgentUnreachable(
                    f"agent of {wiring.describe(name)} at {ep.host}:{ep.port} does not accept connections "
                    f"({e or type(e).__name__}): is it deployed and running? (`splitrack deploy`, or check its "
                    "log on the board)") from None
            time.sleep(0.05)
