"""Host side of the data path: feed frames into a wired rack, collect the results, keep every timestamp.

    with Pipeline(wiring) as pipe:          # connects to every agent (authenticated with wiring.secret),
                                            # HELLO opens a session: results and errors come back
        result = pipe.stream(x, in_flight=8, timeout=5.0)
    result.outputs()                        # (n, *output_shape), frame order
    result.frames[i].records                # every partition's (t_recv, t_compute_start, t_compute_end, t_send)

Frames go out with several in flight (at most `in_flight` unanswered), optionally at a fixed rate, and come
back in any order; they are matched by frame id. A frame that does not come back within `timeout` seconds,
an error reported by an agent, or an agent that goes away end the stream with a `StreamError` that names the
board and stage where the frame was last seen and carries every result already received (`.result`).

Each Pipeline is a session with a random tag (`harness.board.wire`): the tag rides in the high bits of every frame id
on the wire, so frames of an earlier session still inside the rack are dropped by the agents and ignored here.
Frame ids the caller sees count from 0 for each Pipeline.
"""
from __future__ import annotations

import collections
import json
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Optional, Tuple

import numpy as np

from harness.board import wire
from harness.board.wire import MsgType
from harness.rack.wiring import Wiring
from splitting.contract import Contract, assemble
from splitting.errors import UserError

FRAME = int(MsgType.FRAME)  # per frame: a plain int packs faster than an IntEnum member
Record = Tuple[int, int, int, int, int, int, int, int]  # stage, partition id, source id, flags, 4 x ns


class StreamError(UserError):
    """Frames that did not come back; `.result` holds everything that did."""

    def __init__(self, message: str, result: "StreamResult"):
        super().__init__(message)
        self.result = result


class AgentUnreachable(UserError):
    """An agent that does not accept connections or does not answer."""


@dataclass
class FrameResult:
    """One frame that came back: its id, the output array (the model's output shape), host send and receive
    times (time.time_ns, ns) and the timestamp records of every partition it passed (board clocks, ns)."""

    frame: int
    output: np.ndarray
    t_send: int  # host time.time_ns() when the first part left
    t_recv: int  # host time.time_ns() when the last part of the output arrived
    records: List[Record]  # one per (partition, incoming link), board clocks

    @property
    def latency_ns(self) -> int:
        """End-to-end latency on the host clock: t_recv - t_send, in ns."""
        return self.t_recv - self.t_send


@dataclass(frozen=True)
class SendSchedule:
    """A paced stream's schedule, fixed before its first frame leaves: input i is sent no earlier than
    `send_ns(i)` = origin_ns + i / rate seconds, every time from the one origin (a late frame does not push
    the next ones back). origin_ns is in the clock of FrameResult.t_send (host time.time_ns()); the pacer
    waits on the monotonic clock from origin_mono_ns, read just after origin_ns, so a frame's t_send is never
    below its send_ns (the two clocks advance together; only a step of the wall clock could break that)."""

    rate: float  # frames/s
    origin_ns: int
    origin_mono_ns: int

    @classmethod
    def start_now(cls, rate: float) -> "SendSchedule":
        """A schedule at `rate` frames/s whose origin is now (time.time_ns, then time.perf_counter_ns)."""
        origin_ns = time.time_ns()
        return cls(rate, origin_ns, time.perf_counter_ns())

    def offset_ns(self, i: int) -> int:
        """How long after the origin input `i` is due: i / rate seconds, in ns (int)."""
        return int(i * 1e9 / self.rate)

    def send_ns(self, i: int) -> int:
        """When input i is due to leave, in the clock of FrameResult.t_send (ns)."""
        return self.origin_ns + self.offset_ns(i)

    def wait_for(self, i: int) -> None:
        """Return once input i is due (never before; late if the machine is busy)."""
        due = self.origin_mono_ns + self.offset_ns(i)
        while True:
            left = due - time.perf_counter_ns()
            if left <= 0:
                return
            time.sleep(left / 1e9)


@dataclass
class StreamResult:
    """What a stream returned: the frames that came back by id, the errors reported, the host times (ns) of
    the first send and last receive, and the send schedule when paced."""

    wiring: Wiring
    frame_ids: List[int]  # ids of the frames sent, in order (input i -> frame_ids[i])
    frames: Dict[int, FrameResult] = field(default_factory=dict)
    errors: List[str] = field(default_factory=list)
    t_start: int = 0
    t_end: int = 0
    schedule: Optional[SendSchedule] = None  # a paced stream's (rate given): when each input was due to leave
    _stamps: Dict[int, Dict[str, Dict[str, Any]]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def complete(self) -> bool:
        """True when no error was reported and every frame sent came back."""
        return not self.errors and all(f in self.frames for f in self.frame_ids)

    def outputs(self) -> np.ndarray:
        """Outputs in input order, (n, *output_shape); raises if a frame is missing."""
        missing = [f for f in self.frame_ids if f not in self.frames]
        if missing:
            raise StreamError(f"{len(missing)} frame(s) missing (first: {missing[0]})", self)
        return np.stack([self.frames[f].output for f in self.frame_ids])

    def latencies_ns(self) -> np.ndarray:
        """End-to-end latencies (ns, int64) of the frames that came back, in input order: shape (frames back,)."""
        return np.array([self.frames[f].latency_ns for f in self.frame_ids if f in self.frames], dtype=np.int64)

    @property
    def throughput(self) -> float:
        """Frames per second over the whole run (first send to last receive)."""
        got = [self.frames[f] for f in self.frame_ids if f in self.frames]
        if len(got) < 2:
            return float("nan")
        span = max(r.t_recv for r in got) - min(r.t_send for r in got)
        return len(got) / (span / 1e9)

    def stamps(self, frame: int) -> Dict[str, Dict[str, Any]]:
        """partition -> {board, stage, t_recv (last part), t_recv_by_src, t_compute_start, t_compute_end, t_send}
        (worked out once per frame; do not change what it returns)."""
        known = self._stamps.get(frame)
        if known is not None:
            return known
        out: Dict[str, Dict[str, Any]] = {}
        self._stamps[frame] = out
        w = self.wiring
        for stage, pid, src, _flags, t_r, t_cs, t_ce, t_s in self.frames[frame].records:
            name = w.partition_name(pid)
            d = out.setdefault(name, {"board": w.endpoints[name].board if name in w.endpoints else "", "stage": stage,
                                      "t_recv": t_r, "t_recv_by_src": {}, "t_compute_start": t_cs,
                                      "t_compute_end": t_ce, "t_send": t_s})
            d["t_recv"] = max(d["t_recv"], t_r)
            d["t_recv_by_src"][w.partition_name(src)] = t_r
        return out

    def timings(self):
        """Per-frame timings as `harness.measure.attribution.FrameTiming` (board clocks; clocksync maps them to the host's)."""
        from harness.measure.attribution import FrameTiming, StageStamp

        out = []
        for f in self.frame_ids:
            if f not in self.frames:
                continue
            r = self.frames[f]
            st = {name: StageStamp(partition=name, board=d["board"], t_recv=d["t_recv"],
                                   t_compute_start=d["t_compute_start"], t_compute_end=d["t_compute_end"],
                                   t_send=d["t_send"], t_recv_by_src=dict(d["t_recv_by_src"]))
                  for name, d in self.stamps(f).items()}
            out.append(FrameTiming(frame=f, t_host_send=r.t_send, t_host_recv=r.t_recv, stages=st))
        return out


class _AgentConn:
    """The host's connection to one agent: a reader thread dispatching results, errors and replies."""

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


class _Run:
    """State of one stream() call, shared with the reader threads."""

    def __init__(self, result: StreamResult, n_out_parts: int):
        self.result = result
        self.cond = threading.Condition()
        self.outstanding: Dict[int, int] = {}  # frame -> host send time (time.time_ns, the stamps' clock)
        self.deadline_from: Dict[int, int] = {}  # frame -> host send time on the monotonic clock (its timeout's)
        self.parts: Dict[int, Dict[Tuple[str, int], Tuple[bytes, List[Record], int]]] = {}
        self.n_out_parts = n_out_parts
        self.failed: Dict[int, str] = {}  # frame -> reason, from agents' errors
        self.fatal: Optional[str] = None
        # a result wakes the stream's thread only when at most this many frames are outstanding (paced streams
        # wait for a free slot; otherwise it waits for the last result): a wake-up costs tens of us of CPU on a
        # virtual machine, and one per frame for nothing would make the host limit the pipeline
        self.wake_below = 0
        self.queue: Deque[Tuple[int, Any]] = collections.deque()  # frames not sent yet (self-clocked streaming)
        self.in_flight = 0
        self.sent = 0
        self.reported = 0  # frames sent as far as the progress callback was told


SELF_CLOCKED_BYTES = 64 << 10  # a window of frames up to this size streams self-clocked (see stream)


class Pipeline:
    """The host's end of a wired rack: connections to every agent, streaming, ping, clock probes, shutdown."""

    def __init__(self, wiring: Wiring, connect_timeout: float = 10.0):
        self.wiring = wiring
        self._run: Optional[_Run] = None
        self._lock = threading.Lock()
        self._next_frame = 0
        self._watchdog: Optional[threading.Thread] = None  # wakes a stream's untimed waits (see _wait)
        self._closed = False
        self.session = wire.new_session()  # this Pipeline's tag: the high bits of its frame ids on the wire
        self._base = self.session << wire.SESSION_SHIFT
        self.lost: Dict[str, str] = {}
        self.agent_errors: List[Dict[str, Any]] = []
        # fresh Contracts: their derived properties are computed once, then cached
        self.in_links = [Contract.from_dict(c.to_dict()) for c in wiring.input_links]
        self.out_links = {(c.src, c.index): Contract.from_dict(c.to_dict()) for c in wiring.output_links}
        self.conns: Dict[str, _AgentConn] = {}
        try:
            for name in wiring.endpoints:
                self.conns[name] = _AgentConn(self, name, connect_timeout)
            # each _AgentConn waited for its agent's answer to HELLO: every agent has opened this session
            # before the first frame can reach it through its neighbours (a join that took the HELLO late
            # once dropped parts of frame 0 as the last session's)
        except Exception:
            self.close()
            raise

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- control messages --
    def ping(self, partition: str, frame: Optional[int] = None, timeout: float = 2.0) -> Dict[str, Any]:
        """The agent's health: partition, plan hash, frames done, free memory (and a frame's state there)."""
        ask = {} if frame is None else {"frame": self._base | int(frame)}
        return self.conns[partition].request(MsgType.PING, json.dumps(ask).encode(), MsgType.PONG, timeout)

    def probe(self, partition: str, timeout: float = 2.0) -> Tuple[int, int, int, int]:
        """One NTP-style exchange with the agent: (t1 host, t2 board, t3 board, t4 host), ns."""
        t1 = time.time_ns()
        return self.conns[partition].request(MsgType.PROBE, wire.PROBE_REQ.pack(t1), MsgType.PROBE_REPLY, timeout)

    def shutdown_agents(self) -> None:
        """Send SHUTDOWN to every connected agent (each stops after draining); send errors are ignored."""
        for name, c in self.conns.items():
            try:
                c.send(wire.pack_message(MsgType.SHUTDOWN))
            except OSError:
                pass

    def close(self) -> None:
        """Close the connections to the agents (the agents keep running)."""
        self._closed = True
        for c in self.conns.values():
            c.close()

    # -- reader-thread callbacks --
    def _on_output(self, src: str, frame: int, part: int, records, payload: bytes, t: int) -> None:
        run = self._run
        if run is None or frame >> wire.SESSION_SHIFT != self.session:
            return  # no stream running, or a frame of another session
        frame &= wire.FRAME_MASK
        with run.cond:
            if frame not in run.outstanding:
                return  # a late frame of an earlier stream, or one already given up
            got = run.parts.setdefault(frame, {})
            got[(src, part)] = (payload, records, t)
            if len(got) < run.n_out_parts:
                return
            del run.parts[frame]
        # decode outside the lock; the frame stays outstanding until its result is stored, so that stream()
        # never returns before the last result is in
        try:
            links = [self.out_links[k] for k in got]
            values = assemble(links, [c.decode(got[k][0]) for c, k in zip(links, got)])
            out = np.asarray(values).reshape(self.wiring.output_shape)
            error = None
        except Exception as e:  # a payload that does not match its contract
            error = f"frame {frame}: output from {self.wiring.describe(src)} cannot be decoded: {e}"
        records = wire.unpack_records(b"".join(bytes(v[1]) for v in got.values()))
        t_recv = max(v[2] for v in got.values())
        with run.cond:
            t_send = run.outstanding.pop(frame, None)
            if t_send is None:
                return  # timed out meanwhile
            if error:
                run.result.errors.append(error)
                run.failed[frame] = error
                run.fatal = run.fatal or error
            else:
                run.result.frames[frame] = FrameResult(frame, out, t_send, t_recv, records)
            if error or len(run.outstanding) <= run.wake_below:
                run.cond.notify_all()
        if run.queue:
            self._refill(run)

    def _on_error(self, src: str, err: Dict[str, Any]) -> None:
        self.agent_errors.append(err)
        msg = (f"board {err.get('board')} (partition {err.get('partition')}, stage {err.get('stage')}): "
               f"{err.get('message')}")
        run = self._run
        if run is None:
            return
        with run.cond:
            run.result.errors.append(msg)
            frame = int(err.get("frame", -1))
            if frame >= 0:
                frame &= wire.FRAME_MASK
            if frame >= 0 and frame in run.outstanding:
                run.outstanding.pop(frame)
                run.failed[frame] = msg
            run.fatal = run.fatal or msg
            run.cond.notify_all()

    def _on_lost(self, name: str, why: str) -> None:
        self.lost[name] = why
        run = self._run
        if run is None:
            return
        msg = f"lost the connection to the agent of {self.wiring.describe(name)}: {why} (did it crash? see its log)"
        with run.cond:
            run.result.errors.append(msg)
            run.fatal = run.fatal or msg
            run.cond.notify_all()

    # -- streaming --
    def encode_frames(self, x: np.ndarray) -> Tuple[List[int], List[List[Tuple[_AgentConn, bytes]]]]:
        """Messages of every input frame, encoded before the clock starts; frame ids never reused."""
        x = np.asarray(x)
        links = self.in_links
        shape = tuple(links[0].shape) if links[0].select is None else None
        with self._lock:
            ids = list(range(self._next_frame, self._next_frame + len(x)))
            self._next_frame += len(x)
        msgs = []
        size = int(np.prod(shape)) if shape is not None else -1
        for fid, xi in zip(ids, x):
            if xi.size == size:
                xi = xi.reshape(shape)
            msgs.append([(self.conns[c.dst], wire.pack_message(FRAME, frame=self._base | fid, stage=wire.HOST_STAGE,
                                                               part=c.index, payload=c.encode(c.take(xi))))
                         for c in links])
        return ids, msgs

    def stream(self, x: np.ndarray, *, in_flight: int = 8, rate: Optional[float] = None,
               timeout: float = 10.0, progress: Optional[Any] = None) -> StreamResult:
        """Send every frame of `x` (batch axis first), at most `in_flight` unanswered, at `rate` frames/s if
        given; return outputs and timestamps. Raises StreamError (with `.result`) when a frame is lost."""
        if self.lost:
            name, why = next(iter(self.lost.items()))
            raise AgentUnreachable(f"the agent of {self.wiring.describe(name)} is gone ({why}): redeploy")
        ids, msgs = self.encode_frames(x)
        result = StreamResult(self.wiring, ids)
        run = _Run(result, len(self.wiring.output_links))
        self._run = run
        timeout_ns = int(timeout * 1e9)
        result.t_start = time.time_ns()
        if self._watchdog is None:  # one per Pipeline: starting a thread per stream() doubled a lone frame's call
            self._watchdog = threading.Thread(target=self._watch, name="stream watchdog", daemon=True)
            self._watchdog.start()
        frames = list(zip(ids, msgs))
        # Self-clocked streaming sends from the reader threads; safe while a whole window of frames fits in the
        # sockets' buffers (a reader blocked in a send could not read the results that would unblock it)
        window_bytes = in_flight * max((sum(len(m) for _, m in parts) for parts in msgs), default=0)
        try:
            if rate or window_bytes > SELF_CLOCKED_BYTES:
                if rate:
                    result.schedule = SendSchedule.start_now(rate)
                for i, (fid, parts) in enumerate(frames):
                    with run.cond:
                        run.wake_below = in_flight - 1
                        while len(run.outstanding) >= in_flight and not run.fatal:
                            self._wait(run, timeout_ns)
                        if run.fatal:
                            break
                    if result.schedule is not None:
                        result.schedule.wait_for(i)
                    if not self._send_frame(run, fid, parts):
                        break
                    self._progress(run, progress)
            else:
                # Self-clocked: the first window leaves from here, then each result sends the next frame from
                # the reader thread that received it. One thread busy per result: no hand-off to a sender
                # thread, whose wake-ups and GIL contention would cost the host more CPU than the frames.
                run.queue.extend(frames)
                run.in_flight = in_flight
                self._refill(run)
            # the rest: wait for every frame in flight, each up to its own deadline
            with run.cond:
                run.wake_below = 0
                grace_end = None
                while run.outstanding or (run.queue and not run.fatal):
                    if run.fatal and self.lost:
                        # an agent is gone: frames behind it cannot come; give those ahead of it a moment
                        # (none, when every agent that sends the host its outputs is the one gone)
                        outs_gone = all(c.src in self.lost for c in self.wiring.output_links)
                        grace_end = grace_end or time.monotonic() + (0.0 if outs_gone else min(timeout, 2.0))
                        if time.monotonic() > grace_end:
                            for f in list(run.outstanding):
                                run.outstanding.pop(f)
                                run.failed[f] = "abandoned"
                            break
                    self._wait(run, timeout_ns)
                    self._progress(run, progress)
        finally:
            self._run = None
            result.t_end = time.time_ns()
        if not result.complete:
            raise StreamError(self._explain(run, timeout), result)
        return result

    def _send_frame(self, run: _Run, fid: int, parts) -> bool:
        """Send one frame's messages (one per input link); False when that failed (run.fatal says why)."""
        with run.cond:
            run.outstanding[fid] = time.time_ns()
            run.deadline_from[fid] = time.monotonic_ns()
            run.sent += 1
        conn = None
        try:
            for conn, msg in parts:
                conn.send(msg)
            return True
        except OSError as e:
            with run.cond:
                run.outstanding.pop(fid, None)
                run.failed[fid] = f"could not be sent to {self.wiring.describe(conn.name)}: {e}"
                run.fatal = run.fatal or f"frame {fid} " + run.failed[fid]
                run.cond.notify_all()
            return False

    def _refill(self, run: _Run) -> None:
        """Send queued frames while fewer than run.in_flight are unanswered (self-clocked streaming)."""
        while True:
            with run.cond:
                if run.fatal or not run.queue or len(run.outstanding) >= run.in_flight:
                    return
                fid, parts = run.queue.popleft()
            if not self._send_frame(run, fid, parts):
                return

    @staticmethod
    def _progress(run: _Run, progress) -> None:
        """Report every tenth of the frames sent (called from the stream's own thread only)."""
        if progress is None:
            return
        n = len(run.result.frame_ids)
        step = max(1, n // 10)
        while run.reported + step <= run.sent or (run.sent == n and run.reported < n):
            run.reported = min(n, run.reported + step)
            progress(run.reported, n)

    def _wait(self, run: _Run, timeout_ns: int) -> None:
        """Wait (cond held) for progress or a watchdog tick; frames past their deadline fail as timed out.
        Deadlines run on the monotonic clock: a step of the host's wall clock neither hides nor fakes one."""
        now = time.monotonic_ns()
        sent = run.deadline_from
        oldest = min(sent[f] for f in run.outstanding) if run.outstanding else now
        if oldest + timeout_ns <= now:
            late = [f for f in run.outstanding if now - sent[f] >= timeout_ns]
            for f in late:
                run.outstanding.pop(f)
                run.failed[f] = "timeout"
            run.fatal = run.fatal or "timeout"
            return
        # no timeout here: a timed wait arms a kernel timer, which costs tens of us of CPU on a virtual machine,
        # at every wait; the watchdog thread wakes this wait instead, a few times a second
        run.cond.wait()

    def _watch(self, period: float = 0.1) -> None:
        """Wake the running stream's waits now and then, so that deadlines are checked while nothing arrives."""
        while not self._closed:
            time.sleep(period)
            run = self._run
            if run is not None:
                with run.cond:
                    run.cond.notify_all()

    def _explain(self, run: _Run, timeout: float) -> str:
        res = run.result
        got = len(res.frames)
        lines = [f"{got} of {len(res.frame_ids)} frames came back"]
        if res.errors:
            # an agent that is gone explains its neighbours' errors (cannot send to it), which can reach the host
            # before the host notices the lost connection itself: name the agent that is gone first
            gone = [e for e in res.errors if e.startswith("lost the connection to the agent of")]
            lines.append(gone[0] if gone else res.errors[0])
        timed_out = sorted(f for f, why in run.failed.items() if why == "timeout")
        if timed_out:
            f = timed_out[0]
            lines.append(f"frame {f} did not come back within {timeout:g} s: {self.last_seen(f)}")
            if len(timed_out) > 1:
                lines.append(f"{len(timed_out) - 1} more frame(s) timed out")
        abandoned = sum(1 for why in run.failed.values() if why == "abandoned")
        not_sent = len(res.frame_ids) - got - len(run.failed)
        if abandoned or not_sent > 0:
            lines.append(f"{abandoned} frame(s) in flight abandoned, {max(not_sent, 0)} not sent after the failure")
        return "; ".join(lines)

    def last_seen(self, frame: int) -> str:
        """Ask every agent, in stage order, what it knows of `frame`: where it was last seen."""
        w = self.wiring
        seen, notes = None, []
        for name in sorted(w.endpoints, key=lambda n: (w.stages[n], n)):
            try:
                state = self.ping(name, frame=frame, timeout=1.0).get("frame_state", "unknown")
            except (AgentUnreachable, OSError) as e:
                notes.append(f"{w.describe(name)} does not answer ({e})")
                continue
            if state != "unknown":
                seen = (name, state)
            else:
                notes.append(f"{w.describe(name)} has no trace of it")
        where = (f"last seen at {w.describe(seen[0])}: {seen[1]}" if seen else "no board has seen it")
        return "; ".join([where] + notes[:3])


def run_frames(wiring: Wiring, x: np.ndarray, **kw) -> StreamResult:
    """Connect, stream `x`, disconnect."""
    with Pipeline(wiring) as pipe:
        return pipe.stream(x, **kw)
