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

Each Pipeline is a session with a random tag (`harness.agent.wire`): the tag rides in the high bits of every frame id
on the wire, so frames of an earlier session still inside the rack are dropped by the agents and ignored here.
Frame ids the caller sees count from 0 for each Pipeline.

The connection to each agent is harness/measure/agent_conn.py's, what a stream returns harness/measure/stream_result.py's.
"""
from __future__ import annotations

import collections
import json
import threading
import time
from typing import Any, Deque, Dict, List, Optional, Tuple

import numpy as np

from harness.agent import wire
from harness.agent.wire import MsgType
from harness.measure.agent_conn import AgentConn, AgentUnreachable
from harness.measure.stream_result import FrameResult, Record, SendSchedule, StreamError, StreamResult
from harness.rack.wiring import Wiring
from splitting.contract import Contract, assemble

FRAME = int(MsgType.FRAME)  # per frame: a plain int packs faster than an IntEnum member


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
        self.conns: Dict[str, AgentConn] = {}
        try:
            for name in wiring.endpoints:
                self.conns[name] = AgentConn(self, name, connect_timeout)
            # each AgentConn waited for its agent's answer to HELLO: every agent has opened this session
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
    def encode_frames(self, x: np.ndarray) -> Tuple[List[int], List[List[Tuple[AgentConn, bytes]]]]:
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


def stream_outputs(wiring: Wiring, frames, in_flight: int = 8, timeout: float = 10.0) -> np.ndarray:
    """Send `frames` (n, *plan input shape), e.g. (n, 64) for a 64-input Dense model, through the wired rack, at
    most `in_flight` unanswered; returns the outputs (n, values per frame), float, in input order, as the output
    contract decodes them. Raises StreamError (naming the board and stage) when a frame is lost or a board
    fails, AgentUnreachable when an agent is gone."""
    x = np.asarray(frames, dtype=np.float32)
    with Pipeline(wiring) as pipe:
        return pipe.stream(x, in_flight=in_flight, timeout=timeout).outputs().reshape(len(x), -1)
