#!/usr/bin/env python3
"""splitrack board agent: receives frames, runs one partition, forwards the result.

Python 3.8+, standard library and numpy (plus `pynq` for the overlay backend on a real board). On a board it
sits beside `wire.py` (the wire format and the authentication handshake), `agent_config.py` (its
configuration) and `contract.py`, `emulation.py` (copies of `splitting/contract.py`, `splitting/emulation.py`),
and is started as

    python3 agent.py CONFIG.json

It prints one line to stdout when it listens: `{"ready": true, "port": P, "pid": N}`, then logs to its log file
only. SIGTERM or a SHUTDOWN message (from an authenticated peer) stop it cleanly (pidfile removed, exit 0).

The configuration is `agent_config.AgentConfig` (JSON on disk); the wire format is `wire.py`'s docstring.

It trusts nobody it has not authenticated: every connection proves it knows the deployment's secret (the
file `secret_file`, written by deploy) before the agent reads anything else from it; a connection that does
not, or sends a message that is not ours, is closed and logged in one line (rate-limited), and the others go
on. Headers are bounded by the links' contracts before any buffer grows; connections are capped.

A HELLO from the host opens a session with the random tag it carries: frames of any other session (queued
or late from an earlier host) are dropped where they are found, and what the agent remembered of earlier
frames is forgotten.
"""
from __future__ import annotations

import collections
import errno
import json
import logging
import os
import queue
import signal
import socket
import sys
import threading
from struct import error as struct_error
import time
import traceback

import numpy as np

try:  # on a board: copies beside this file; in the repository: the splitting and harness packages
    import contract as _contract  # type: ignore
except ImportError:  # pragma: no cover - depends on where the agent runs
    from splitting import contract as _contract
try:
    import wire  # type: ignore
    from agent_config import AgentConfig, AgentConfigError, config_path  # type: ignore
except ImportError:  # pragma: no cover
    from harness.board import wire
    from harness.board.agent_config import AgentConfig, AgentConfigError, config_path


def _overlay_backend_class():
    """OverlayBackend (a real board's backend), imported when a config asks for it: the agents of other
    backends (every virtual board) do not load the module at their start."""
    try:
        from overlay import OverlayBackend  # type: ignore
    except ImportError:  # pragma: no cover
        from harness.board.overlay import OverlayBackend
    return OverlayBackend

assemble = _contract.assemble
Contract = _contract.Contract  # its derived properties are cached: encode/decode per frame stay cheap
ProtocolError = wire.ProtocolError

_time_ns = time.time_ns  # one global lookup per timestamp on the per-frame path
# plain ints on the per-frame path (an IntEnum member compares slower)
FRAME, ERROR, PROBE, PROBE_REPLY, PING, PONG, SHUTDOWN, HELLO = (int(t) for t in (
    wire.MsgType.FRAME, wire.MsgType.ERROR, wire.MsgType.PROBE, wire.MsgType.PROBE_REPLY, wire.MsgType.PING,
    wire.MsgType.PONG, wire.MsgType.SHUTDOWN, wire.MsgType.HELLO))
OWN_RECORD, RECORD_HEAD, FRAME_HEAD, FRAME_PREFIX = wire.OWN_RECORD, wire.RECORD_HEAD, wire.FRAME_HEAD, wire.FRAME_PREFIX
PROBE_REQ, PROBE_REP = wire.PROBE_REQ, wire.PROBE_REP
pack_message = wire.pack_message
send_parts = wire.send_parts
SESSION_SHIFT, FRAME_MASK = wire.SESSION_SHIFT, wire.FRAME_MASK
HOST_ID = wire.HOST_ID


class RateLimitedLog:
    """At most `burst` lines per `period` seconds of one kind; the rest counted and summed up in the next line.
    A stranger hammering the port cannot fill the board's SD card with the agent's log."""

    def __init__(self, log, burst=10, period=10.0):
        self.log, self.burst, self.period = log, burst, period
        self.window = 0.0
        self.count = 0
        self.suppressed = 0
        self.lock = threading.Lock()

    def warning(self, fmt, *args):
        """Log `fmt % args` as a warning unless `burst` lines were already logged in this `period`; then
        only count it (the count is logged when the next period starts)."""
        now = time.monotonic()
        with self.lock:
            if now - self.window > self.period:
                if self.suppressed:
                    self.log.warning("%d more such line(s) suppressed in the last %.0f s", self.suppressed,
                                     self.period)
                self.window, self.count, self.suppressed = now, 0, 0
            self.count += 1
            if self.count > self.burst:
                self.suppressed += 1
                return
        self.log.warning(fmt, *args)


def free_memory_bytes():
    """MemAvailable from /proc/meminfo (what a new allocation can get), or None elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reduce_timer_slack():
    """Linux rounds sleeps up by the timer slack (50 us by default); 1 us lets the timing model sleep closer
    to its deadline and spin less."""
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        libc.prctl(29, 1000, 0, 0, 0)  # PR_SET_TIMERSLACK, ns
    except Exception:
        pass


class Pacer:
    """Waits until a deadline, never returning early, precise to a few us, without burning a CPU.

    A sleep wakes late by the timer's latency (40-60 us on a virtual machine, ~5 us on a quiet board).
    Spinning through all of that would cost every frame that much CPU: with five agents on two cores the
    spinning, not the stages, would limit the pipeline. So the pacer measures the latency once, while the
    agent is idle (a low percentile of a few short sleeps), sleeps until that much before a deadline, and
    spins (yielding the CPU and the GIL) only the rest. Not re-estimated while running: under load a sleep
    wakes late because the CPUs are busy, and spinning longer would only make them busier."""

    def __init__(self, late_ns=60000, margin_ns=5000):
        self.late_ns = late_ns  # how late a sleep wakes on this machine (see calibrate)
        self.margin_ns = margin_ns

    def calibrate(self, sleeps=25, sleep_ns=100000):
        """Measure how late `sleeps` sleeps of `sleep_ns` ns wake (perf_counter_ns), keep the 10th percentile
        in `late_ns` (>= 0) and return it, in ns."""
        late = []
        for _ in range(sleeps):
            t = time.perf_counter_ns()
            time.sleep(sleep_ns / 1e9)
            late.append(time.perf_counter_ns() - t - sleep_ns)
        self.late_ns = max(0, sorted(late)[sleeps // 10])
        return self.late_ns

    def wait_until(self, deadline_ns):
        """Return no earlier than `deadline_ns` (time.perf_counter_ns clock, ns): sleep until `late_ns` +
        `margin_ns` before it, then spin with os.sched_yield."""
        sleep_ns = deadline_ns - time.perf_counter_ns() - self.late_ns - self.margin_ns
        if sleep_ns > 0:
            time.sleep(sleep_ns / 1e9)
        while time.perf_counter_ns() < deadline_ns:
            # not sleep(0): on a virtual machine that is a timer wait too (~20 us); sched_yield releases the
            # GIL (the agent's other threads keep receiving and sending) and lets other processes run
            os.sched_yield()


PACER = Pacer()  # one compute at a time per agent (compute_lock): one pacer is enough
wait_until = PACER.wait_until


# --- backends ----------------------------------------------------------------------------------------
class PassthroughBackend:
    """Returns its input unchanged (as float64); with one link in and one out of the same encoding and no
    `decode`, `forward_bytes` lets the agent forward the payload bytes without decoding them."""

    kind = "passthrough"

    def __init__(self, cfg, inputs, outputs):
        self.forward_bytes = (not cfg.get("decode", False) and len(inputs) == 1 and len(outputs) == 1
                              and outputs[0].select is None and _same_encoding(inputs[0], outputs[0]))

    def run(self, x):
        """`x` as a float64 array of the same shape."""
        return np.asarray(x, dtype=np.float64)


def _same_encoding(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and a.data_width == b.data_width


class EmulationBackend:
    """The partition's hls4ml C emulation library (splitting/emulation.py's EmulationLib).

    Raises AgentConfigError when the library file is missing."""

    kind = "emulation"
    forward_bytes = False

    def __init__(self, cfg, base):
        try:
            import emulation as _emulation  # type: ignore
        except ImportError:  # pragma: no cover
            from splitting import emulation as _emulation
        lib = config_path(cfg["library"], base)
        if not os.path.isfile(lib):
            raise AgentConfigError("emulation library %s not found: upload the partition's artifact" % lib)
        self.lib = _emulation.EmulationLib(lib, cfg["project"], cfg["n_in"], cfg["n_out"])

    def run(self, x):
        """One frame (n_in elements, any shape) in; a flat float64 array of n_out elements out.
        Raises ValueError when the frame has another number of elements."""
        return self.lib.run(x)


# --- the agent ---------------------------------------------------------------------------------------
class Conn:
    """One TCP connection: a reader and a write lock (frames, replies and errors may share it)."""

    def __init__(self, sock, name, max_payload=wire.MAX_CONTROL_PAYLOAD, max_records=wire.MAX_RECORDS):
        self.sock = sock
        self.name = name
        self.reader = wire.Reader(sock, max_payload=max_payload, max_records=max_records)
        self.wlock = threading.Lock()
        self.closed = False
        self.source = ""  # the peer's address (accepted connections)
        self.role = None  # who proved itself on it: "host", or the partition of a link's producer
        self.parts = frozenset()  # the incoming links (by index) whose frames it may carry

    def send(self, data):
        """Send all of `data` (bytes) under the write lock; raises OSError when the socket fails."""
        with self.wlock:
            self.sock.sendall(data)

    def close(self):
        """Shut down and close the socket; a second call does nothing."""
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class Agent:
    """One partition on one board: accepts authenticated connections, joins the parts of each frame, runs
    the backend (paced by the timing model when `timing` is set) and sends the results on, per the config.
    serve() starts it; shutdown() stops it."""

    def __init__(self, cfg, base="."):
        """cfg: an AgentConfig, or its dict (checked here); AgentConfigError when it cannot run."""
        if not isinstance(cfg, AgentConfig):
            cfg = AgentConfig.from_dict(cfg)
        self.cfg = cfg
        self.base = base
        self.board = cfg.board
        self.partition = cfg.partition
        self.partition_id = cfg.partition_id
        self.stage = cfg.stage
        self.plan_hash = cfg.plan_hash
        try:
            self.inputs = sorted((Contract.from_dict(c) for c in cfg.inputs), key=lambda c: c.index)
            self.outputs = [(Contract.from_dict(o["contract"]), o["to"]) for o in cfg.outputs]
            # (contract, destination, key of its connection in self.links; None: the host's connection)
            self.routes = [(c, to, None if to == "host" else (str(to["host"]), int(to["port"])))
                           for c, to in self.outputs]
        except (KeyError, TypeError, ValueError) as e:
            raise AgentConfigError("a link of the config is malformed (%s: %s)" % (type(e).__name__, e))
        self.output_shape = tuple(cfg.output_shape)
        self.listen_addr = (cfg.listen["host"], cfg.listen["port"])
        self.secret_path = config_path(cfg.secret_file, base)
        self.secret = self._secret()  # refuses to start without one
        self.part_ids = {c.index: self._src_id(c) for c in self.inputs}
        self.part_pos = {c.index: i for i, c in enumerate(self.inputs)}
        self.n_in = len(self.inputs)
        self.lone = self.n_in == 1 and len(self.outputs) == 1  # one link in, one out: see _on_lone_frame
        # the fixed fields of this partition's record per incoming link: stage, partition id, source id, flags
        self.rec_heads = [RECORD_HEAD.pack(self.stage, self.partition_id, self.part_ids[c.index], 0)
                          for c in self.inputs]
        # what a message on a connection may announce, checked before any buffer grows: the largest payload
        # of an incoming link (or a control message), and a record per partition and link of the plan
        self.max_payload = max([c.payload_bytes for c in self.inputs] + [wire.MAX_CONTROL_PAYLOAD])
        self.max_records = 4 * max(16, len(cfg.partition_ids))  # before authentication, and for older configs
        # who may connect (the host; the producers of incoming links), what each may send (frames of its own
        # links only), and how many records each frame from it carries (the plan's paths into it)
        self.peers = {wire.peer_id(cfg.plan_hash, wire.HOST): wire.HOST}
        self.peers.update((wire.peer_id(cfg.plan_hash, c.src), c.src) for c in self.inputs if c.src != wire.HOST)
        self.parts_from = {r: frozenset(c.index for c in self.inputs if c.src == r) for r in self.peers.values()}
        self.my_peer_id = wire.peer_id(cfg.plan_hash, cfg.partition)
        # the identity of each next hop, as its handshake proves it (its partition and the endpoint it is reached at)
        self.link_ids = {key: wire.agent_id(cfg.plan_hash, c.dst, key[0], key[1]) for c, _, key in self.routes
                         if key is not None}
        self.me = None  # this agent's identity, once its port is known (serve)
        self.skew = cfg.clock_skew_ns
        timing = cfg.timing or None
        self.period_ns = int(round(timing["cycles"] * 1000.0 / timing.get("clock_mhz", 100.0))) if timing else 0
        self.in_flight = cfg.in_flight
        self.connect_timeout = cfg.connect_timeout
        self.part_timeout = cfg.part_timeout
        self.drop = set(int(f) for f in (cfg.faults or {}).get("drop_frames", ()))
        self.log = logging.getLogger("splitrack.agent")
        self.quiet_log = RateLimitedLog(self.log)  # what strangers and broken peers cause
        self.backend = None
        self.bypass = False  # set by load_backend: bytes forwarded unchanged, no timing model
        self.raw = False  # set by load_backend: overlay in raw-word mode (DMA slots, see OverlayBackend)
        self.run_payloads = None  # set by load_backend: a backend that maps payloads to its buffers itself
        self.slot_ready = threading.Condition()  # raw mode: a receiver waiting for a free slot (rare)
        self.slot_waiters = 0  # receivers waiting on slot_ready
        self.computing = None  # the frame id the backend is running now
        self.session = 0  # the tag of the host's session (HELLO); frames of any other are dropped
        self.stale_dropped = 0  # frames of earlier sessions dropped
        self.stop = threading.Event()
        self.stopped = threading.Event()  # shutdown has finished (connections closed, counters logged)
        self.compute_q = queue.Queue(self.in_flight)
        self.send_q = queue.Queue(self.in_flight)
        # the queues' deques: empty means nothing waits (read without taking the queue's lock)
        self.compute_backlog, self.send_backlog = self.compute_q.queue, self.send_q.queue
        self.compute_lock = threading.Lock()  # held by whichever thread computes a frame (one at a time)
        self.send_lock = threading.Lock()  # held by whichever thread sends a frame
        self.out_links = [c for c, _ in self.outputs]
        # a frame's header and this partition's record, packed in place by whoever holds send_lock
        self.scratch = bytearray(64)
        self.head_view, self.own_view = memoryview(self.scratch)[:24], memoryview(self.scratch)[24:]
        self.pending = {}  # frame id -> [parts by index, records, arrival ns by index, first arrival monotonic]
        self.pending_lock = threading.Lock()
        # frame id -> what happened to it here, the latest 8192 frames: an ordered dict whose oldest entry goes
        # as a new one comes (a plain dict trimmed by half swung the agent's memory by a few hundred KiB)
        self.state = collections.OrderedDict()
        self.host = None  # the Conn of the host that said HELLO
        self.host_ready = threading.Condition()
        self.links = {}  # (host, port) -> Conn of a next hop
        self.conns = set()  # authenticated connections: capped at max_connections
        self.unauthenticated = collections.OrderedDict()  # accepted, not yet authenticated (oldest first)
        self.conns_lock = threading.Lock()
        # frame counters: attributes, not a dict, as they are counted on the per-frame path (see `counters`)
        self.received = self.done = self.sent = self.errors = self.dropped = 0
        self.refused = 0  # connections closed before or at authentication, or for a bad message
        self.unreported = collections.deque(maxlen=64)  # errors raised before any host attached
        self.started = time.time()
        self.listener = None

    def _secret(self):
        """The deployment's secret, read again for each new connection: a deploy that leaves this agent
        running writes a new secret file, and the agent follows it."""
        try:
            return wire.read_secret(self.secret_path)
        except (OSError, ValueError) as e:
            raise AgentConfigError("no usable secret in %s (%s): deploy writes it; the agent serves nobody "
                                   "without one" % (self.secret_path, e))

    def _src_id(self, c):
        ids = self.cfg.partition_ids
        return HOST_ID if c.src == "host" else int(ids.get(c.src, HOST_ID - 1))

    @property
    def counters(self):
        """Frame counters since start: received, done, sent, errors, dropped, stale_dropped (earlier
        sessions), refused (connections): dict of str -> int."""
        return {"received": self.received, "done": self.done, "sent": self.sent, "errors": self.errors,
                "dropped": self.dropped, "stale_dropped": self.stale_dropped, "refused": self.refused}

    # -- helpers --
    def now(self):
        """Wall-clock time in ns (time.time_ns) plus the configured clock skew `clock_skew_ns`."""
        return time.time_ns() + self.skew

    def _set_state(self, frame, what):
        st = self.state
        st[frame] = what
        if len(st) > 8192:
            self._trim_state()

    def _trim_state(self):
        """Forget the oldest frame states beyond 8192: memory stays bounded, and flat once full."""
        st = self.state
        while len(st) > 8192:
            st.popitem(last=False)

    def report(self, message, frame=-1, exc=None):
        """Log an error and send it to the host: board, partition and stage named, never silent."""
        self.errors += 1
        if exc is not None:
            self.log.error("frame %s: %s\n%s", frame & FRAME_MASK if frame >= 0 else frame, message, "".join(traceback.format_exception(
                type(exc), exc, exc.__traceback__)))
        else:
            self.log.error("frame %s: %s", frame & FRAME_MASK if frame >= 0 else frame, message)
        if frame >= 0:
            self._set_state(frame, "error: " + message)
        body = json.dumps({"board": self.board, "partition": self.partition, "stage": self.stage,
                           "frame": frame, "message": message}).encode()
        msg = pack_message(ERROR, frame=max(frame, 0), stage=self.stage, payload=body)
        host = self.host
        if host is None:
            self.unreported.append(msg)
            return
        try:
            host.send(msg)
        except OSError:
            self.unreported.append(msg)

    def health(self, ask=None):
        """The agent's state for a PING reply (dict, JSON-safe): identity, pid, uptime_s (s), backend, counters,
        free_memory and free_disk (bytes, None when unknown), queue lengths, stale/idle; with `ask`
        {'frame': n}, also that frame's state here."""
        h = {"board": self.board, "partition": self.partition, "stage": self.stage, "plan_hash": self.plan_hash,
             "pid": os.getpid(), "uptime_s": round(time.time() - self.started, 3),
             "backend": self.backend.kind if self.backend else None, "frames_done": self.done,
             # why a fast backend runs the emulation (or which layers run its compiled kernel)
             "backend_note": getattr(self.backend, "note", "") if self.backend else "",
             "counters": dict(self.counters), "free_memory": free_memory_bytes(),
             "python": sys.version.split()[0], "queues": [self.compute_q.qsize(), self.send_q.qsize()],
             "waiting_for_parts": len(self.pending), "host_attached": self.host is not None,
             "session": self.session}
        # what a session left inside (deploy restarts an agent that holds any: agent_stale_state)
        h["stale"] = ", ".join("%d %s" % (n, k) for k, n in (
            ("frame(s) queued", len(self.compute_backlog) + len(self.send_backlog)),
            ("frame(s) waiting for parts", len(self.pending))) if n) or False
        h["idle"] = self.host is None and not h["stale"]  # no host attached, nothing of a session inside
        try:
            import shutil
            h["free_disk"] = shutil.disk_usage(self.base).free
        except OSError:
            h["free_disk"] = None
        if ask is not None and "frame" in ask:
            h["frame"] = int(ask["frame"])
            f = int(ask["frame"])
            h["frame_state"] = "computing" if f == self.computing else self.state.get(f, "unknown")
        return h

    # -- lifecycle --
    def load_backend(self):
        """Build the backend the config names (passthrough, emulation or overlay) and decide `bypass`.
        Raises AgentConfigError for another kind or a missing library or bitstream."""
        b = self.cfg.backend
        kind = b.get("kind")
        if kind == "passthrough":
            self.backend = PassthroughBackend(b, self.inputs, [c for c, _ in self.outputs])
        elif kind == "emulation":
            self.backend = EmulationBackend(b, self.base)
        elif kind == "fast":  # virtual boards: fast bit-exact model, checked against the emulation at start
            try:
                from fast_model import FastBackend  # type: ignore  # on a board, beside agent.py
            except ImportError:
                FastBackend = None
            if FastBackend is None:  # an older deployment without the module: the emulation is always right
                self.log.warning("backend fast: fast_model.py is not beside agent.py; running the emulation")
                self.backend = EmulationBackend(b, self.base)
            else:
                self.backend = FastBackend(b, self.base, EmulationBackend, self.log)
        elif kind == "overlay":
            # raw words: a slot per frame that can be inside at once: both queues, one computing, one sending,
            # and the next receipt of each connection that carries frames (a few)
            self.backend = _overlay_backend_class()(b, self.base, self.inputs, [c for c, _ in self.outputs],
                                          slots=2 * self.in_flight + 6)
        else:
            raise AgentConfigError("backend kind %r: use emulation, fast, overlay or passthrough" % (kind,))
        self.bypass = self.backend.forward_bytes and not self.period_ns
        self.raw = getattr(self.backend, "raw", False)
        self.run_payloads = getattr(self.backend, "run_payloads", None)
        if self.raw:
            self.free_slots = collections.deque(self.backend.slots)  # pop/append: atomic, no lock
            self.in_bytes = self.backend.in_bytes
            self._compute, self._send, self._discard = self._compute_raw, self._send_raw, self._free_slot

    def serve(self):
        """Listen, start the threads, return the bound port. run() waits for the end."""
        self.load_backend()
        # a thread that has just received a frame waits for the GIL while another runs Python code; the default
        # 5 ms switch interval would then add up to 5 ms to a hop: an agent moves frames, switch sooner
        sys.setswitchinterval(0.0005)
        if self.period_ns:
            _reduce_timer_slack()
            self.log.info("timing model: sleeps wake %.0f us late here (calibrated)", PACER.calibrate() / 1e3)
        try:
            family = socket.getaddrinfo(self.listen_addr[0], self.listen_addr[1], 0, socket.SOCK_STREAM)[0][0]
            srv = socket.socket(family, socket.SOCK_STREAM)
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart at once after a crash
            srv.bind(self.listen_addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise AgentConfigError("cannot listen on %s:%d: another process holds that port (an agent started "
                                       "from another workdir?)" % self.listen_addr)
            raise AgentConfigError("cannot listen on %s:%d (%s): the board's address in the rack file must be one "
                                   "of this board's own addresses on the data network" % (self.listen_addr + (e,)))
        srv.listen(64)
        self.listener = srv
        self._spare_fd = _spare_fd()
        port = srv.getsockname()[1]
        endpoint = self.cfg.endpoint or "%s:%d" % (self.listen_addr[0], port)
        host, _, eport = endpoint.rpartition(":")
        self.me = wire.agent_id(self.plan_hash, self.partition, host, int(eport))  # what every handshake binds
        for target, name in ((self._accept_loop, "accept"), (self._compute_loop, "compute"),
                             (self._send_loop, "send"), (self._housekeeping, "housekeeping")):
            threading.Thread(target=target, name=name, daemon=True).start()
        self.log.info("agent %s/%s (stage %d, plan %s) listening on %s:%d, backend %s, timing %s ns",
                      self.board, self.partition, self.stage, self.plan_hash, self.listen_addr[0], port,
                      self.backend.kind, self.period_ns or "none")
        return port

    def shutdown(self, drain_s=2.0):
        """Stop: close the listener, let queued frames leave for up to `drain_s` seconds, close every connection
        and log the counters; a second call does nothing."""
        if self.stop.is_set():
            return
        deadline = time.monotonic() + drain_s
        try:
            self.listener.close()
        except Exception:
            pass
        # let frames already inside the agent leave, for a bounded time
        while time.monotonic() < deadline and (self.compute_q.qsize() or self.send_q.qsize()):
            time.sleep(0.01)
        self.stop.set()
        with self.conns_lock:
            pending = list(self.unauthenticated)
        for c in list(self.conns) + pending + list(self.links.values()):
            c.close()
        self.log.info("agent stopped: %s", self.counters)
        self.stopped.set()

    # -- threads --
    def _accept_loop(self):
        listener = self.listener
        while not self.stop.is_set():
            try:
                sock, addr = listener.accept()
            except OSError as e:
                if self.stop.is_set() or e.errno in (errno.EBADF, errno.EINVAL, errno.ENOTSOCK):
                    return  # the listener was closed: shutdown
                # out of file descriptors (EMFILE/ENFILE) or memory: the pending connection would stay in the
                # backlog and wake accept again at once; a spare descriptor lets us take it and close it
                self.quiet_log.warning("accept failed (%s) with %d connections open: shedding one, going on",
                                       e, len(self.conns))
                self._shed_one(listener)
                continue
            name = "%s:%d" % addr[:2]
            # Not yet authenticated connections have slots of their own (max_pending); a new one beyond them
            # pushes out the oldest of the address that holds the most (a crowd from one address pushes out
            # its own). Strangers who open connections and say nothing, or a byte now and then, only push each
            # other out: a peer that authenticates within milliseconds gets through, and the authenticated
            # connections (max_connections) are never taken by strangers.
            conn = Conn(sock, name, self.max_payload, self.max_records)
            conn.source = addr[0]
            with self.conns_lock:
                victim = self._crowded() if len(self.unauthenticated) >= self.cfg.max_pending else None
                if victim is not None:
                    del self.unauthenticated[victim]
                self.unauthenticated[conn] = time.monotonic()
            if victim is not None:
                self.refused += 1
                self.quiet_log.warning("connection from %s closed before it authenticated: newer ones came "
                                       "(max_pending %d)", victim.name, self.cfg.max_pending)
                victim.close()
                self.stop.wait(0.001)  # pushing out is bounded in rate: a crowd cannot churn the slots at will
            try:
                threading.Thread(target=self._read_loop, args=(conn,), name="read " + name, daemon=True).start()
            except RuntimeError as e:  # no thread to serve it: refuse this one, keep accepting
                self.quiet_log.warning("connection from %s closed: %s", name, e)
                self._forget(conn)

    def _crowded(self):
        """The not yet authenticated connection to push out (conns_lock held): the oldest of the source
        address that holds the most of them."""
        counts = collections.Counter(c.source for c in self.unauthenticated)
        top = max(counts.values())
        return next(c for c in self.unauthenticated if counts[c.source] == top)  # oldest first (insertion order)

    def _shed_one(self, listener):
        if self._spare_fd is not None:
            os.close(self._spare_fd)
            self._spare_fd = None
            try:
                sock, _ = listener.accept()
                sock.close()
            except OSError:
                pass
            self._spare_fd = _spare_fd()
        self.stop.wait(0.01)

    def _forget(self, conn):
        with self.conns_lock:
            self.conns.discard(conn)
            self.unauthenticated.pop(conn, None)
        if self.host is conn:
            self.host = None
        conn.close()

    def _authenticate(self, conn):
        """True when the peer proved the secret, bound to this agent and to a peer it accepts (the host, or a
        link's producer: wire.agent_handshake), within auth_timeout in all; the connection then carries only
        what that peer may send. Otherwise the connection is closed, one line logged."""
        try:
            role = wire.agent_handshake(conn.sock, self._secret(), self.cfg.auth_timeout, self.me, self.peers)
        except (wire.AuthError, EOFError, OSError, AgentConfigError) as e:
            self.refused += 1
            if not conn.closed:  # (closed: pushed out by newer connections, logged there)
                self.quiet_log.warning("connection from %s refused at authentication: %s", conn.name,
                                       "not authenticated within %g s" % self.cfg.auth_timeout
                                       if isinstance(e, socket.timeout) else e)
            return False
        with self.conns_lock:
            if self.unauthenticated.pop(conn, None) is None:  # pushed out meanwhile
                return False
            full = len(self.conns) >= self.cfg.max_connections
            if not full:
                self.conns.add(conn)
        if full:
            self.refused += 1
            self.quiet_log.warning("connection of %s from %s closed: %d authenticated connections open "
                                   "(max_connections)", role, conn.name, len(self.conns))
            return False
        conn.role = role
        conn.parts = self.parts_from.get(role, frozenset())
        if self.cfg.records_in:  # a frame of this peer carries its paths' records (the host's: none): no more is read
            conn.reader.max_records = self.cfg.records_in.get(role, 0)
        wire.set_socket_options(conn.sock)
        # an authenticated peer that vanishes without closing (a host powered off) is found by TCP keepalive
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return True

    def _read_loop(self, conn):
        if not self._authenticate(conn):
            self._forget(conn)
            return
        try:
            if self.raw:
                self._read_raw(conn)
                return
            message = conn.reader.message
            on_frame = self._on_lone_frame if self.lone else self._on_frame
            on_control = self._on_control
            parts = conn.parts
            while True:  # ends when the peer closes, or at shutdown when the socket is closed under it
                # views of the receive buffer, not copies: whatever keeps them past this turn copies them
                mtype, frame, stage, part, records, payload = message(False)
                if mtype == FRAME:
                    if part not in parts:  # only a link's producer sends its frames
                        raise ProtocolError("a frame on link %d from %s, which produces none of this agent's links "
                                            "%s" % (part, conn.role, sorted(parts)))
                    # the payload's size was bounded by the reader; its exact size is checked where it is decoded
                    # (here, or by the host when bytes are forwarded unchanged): not twice on the per-frame path
                    if frame >> SESSION_SHIFT == self.session:
                        on_frame(frame, part, records, payload)
                    else:
                        self.stale_dropped += 1  # a frame of an earlier session (or none): nobody waits for it
                elif on_control(conn, mtype, payload):
                    return
        except (EOFError, ConnectionError):
            pass
        except OSError:
            if not self.stop.is_set():
                self.log.info("connection %s lost", conn.name)
        except (ProtocolError, ValueError, TypeError, struct_error) as e:
            # a bad message ends this connection only; the stream's other connections go on
            self.refused += 1
            self.quiet_log.warning("connection %s closed: %s", conn.name, e)
        except Exception as e:  # a bug: say so, keep serving other connections
            self.report("receiving from %s failed: %s" % (conn.name, e), exc=e)
        finally:
            self._forget(conn)

    def _discard(self, item):
        """A job or send item dropped from a queue (an earlier session's): nothing to give back (raw-word mode
        gives back its slot: _free_slot)."""

    def _on_control(self, conn, mtype, payload):
        """A message other than FRAME; True when the connection's loop must end (SHUTDOWN). Only the host
        sends them (ProtocolError on another peer's connection)."""
        if conn.role != wire.HOST:
            raise ProtocolError("message type %d from %s: only the host sends control messages" % (mtype, conn.role))
        if mtype == PROBE:
            t2 = self.now()
            (t1,) = PROBE_REQ.unpack(payload)
            with conn.wlock:
                t3 = self.now()
                conn.sock.sendall(pack_message(PROBE_REPLY, payload=PROBE_REP.pack(t1, t2, t3)))
        elif mtype == PING:
            ask = wire.json_object(payload)
            conn.send(pack_message(PONG, payload=json.dumps(self.health(ask)).encode()))
        elif mtype == HELLO:
            self._attach_host(conn, wire.json_object(payload))
        elif mtype == SHUTDOWN:
            self.log.info("shutdown requested by %s", conn.name)
            threading.Thread(target=self.shutdown, daemon=True).start()
            return True
        else:
            raise ProtocolError("unexpected message type %d" % mtype)
        return False

    # -- overlay in raw-word mode: frames received into DMA buffers, sent from them --
    def _read_raw(self, conn):
        """The read loop of raw-word mode. Before each message a free slot is taken (when this connection has
        carried a frame already and one is free) and its input buffer given to the reader as the destination
        of the next frame's payload: the payload is received there, where the DMA reads it. A frame of the
        wrong size is refused (reported, never DMA'd); one of another session is dropped; both free the slot."""
        reader, free, in_bytes = conn.reader, self.free_slots, self.in_bytes
        message, message_into = reader.message, reader.message_into
        # what the per-frame path uses, bound once (constant for the agent's life; self.host, self.session and
        # self.state are not: they change when a host attaches, and are read per frame)
        skew, drop, period_ns = self.skew, self.drop, self.period_ns
        compute_backlog, send_backlog = self.compute_backlog, self.send_backlog
        compute_lock, send_lock = self.compute_lock, self.send_lock
        run_raw, out_bytes, free_append = self.backend.run_raw, self.backend.out_bytes, free.append
        route = self.routes[0]
        c_index, key = route[0].index, route[2]
        stage, rec_head = self.stage, self.rec_heads[0]
        scratch, head_view, own_view = self.scratch, self.head_view, self.own_view
        perf_ns = time.perf_counter_ns
        while True:
            slot = None
            if reader.expect_records is not None and free:
                try:
                    slot = free.pop()
                except IndexError:  # another connection's reader took the last one
                    slot = None
            if slot is not None:
                try:
                    mtype, frame, stage_in, part, records, payload = message_into(slot.inview)
                except BaseException:  # the connection ends (closed, or a bad message): the slot is not lost
                    self._free_slot((0, slot))
                    raise
            else:
                mtype, frame, stage_in, part, records, payload = message(False)
                if mtype == FRAME:
                    reader.expect_records = len(records) // 40
            if mtype != FRAME:
                if slot is not None:
                    self._free_slot((0, slot))
                if self._on_control(conn, mtype, payload):
                    return
                continue
            if part not in conn.parts:  # only a link's producer sends its frames
                if slot is not None:
                    self._free_slot((0, slot))
                raise ProtocolError("a frame on link %d from %s, which produces none of this agent's links"
                                    % (part, conn.role))
            if frame >> SESSION_SHIFT != self.session:
                self.stale_dropped += 1  # written into a free buffer, never DMA'd
                if slot is not None:
                    self._free_slot((0, slot))
                continue
            if slot is None or payload is not slot.inview:
                if len(payload) != in_bytes:  # refused before any DMA: the accelerator takes exactly this many
                    if slot is not None:
                        self._free_slot((0, slot))
                    c = self.inputs[0]
                    self.report("stage %d (%s on %s) refused frame %d: link %s->%s: payload of %d bytes, contract "
                                "says %d" % (self.stage, self.partition, self.board, frame & FRAME_MASK, c.src, c.dst,
                                             len(payload), in_bytes), frame)
                    self.received += 1
                    continue
                if slot is None:  # every slot was taken when this message came: wait for one, copy once
                    slot = self._take_slot(frame)
                    if slot is None:
                        self.received += 1
                        continue
                    slot.inview[:] = payload
            t = _time_ns() + skew
            if compute_backlog or drop or not compute_lock.acquire(False):  # busy: queue it
                self._queue_raw_frame(frame, slot, records, t)
                continue
            # The agent is idle: this frame is computed and sent here, in the receiving thread, with no method
            # call per step (as the compute and send threads would, _compute_raw and _send_raw: the same steps,
            # states and counters).
            try:
                self.computing = frame
                t_cs = _time_ns() + skew
                try:
                    if period_ns:
                        t0 = perf_ns()
                        run_raw(slot)
                        wait_until(t0 + period_ns)
                    else:
                        run_raw(slot)
                except Exception as e:
                    self._free_slot((frame, slot))
                    self._compute_failed(frame, e)
                    self.received += 1
                    continue
                t_ce = _time_ns() + skew
                self.computing = None
                self.done += 1
            finally:
                compute_lock.release()
            if send_backlog or not send_lock.acquire(False):  # another frame is being sent: queue behind it
                self._set_state(frame, "computed, queued for sending")
                self.send_q.put((frame, slot, bytes(records), (t,), t_cs, t_ce))
                self.received += 1
                continue
            try:
                conn_out = self.host if key is None else self.links.get(key)
                if conn_out is None:
                    conn_out = self._link(route[1])
                nrec = len(records) // 40
                FRAME_HEAD.pack_into(scratch, 0, FRAME_PREFIX, frame, stage, c_index, out_bytes, nrec + 1)
                total = 64 + 40 * nrec + out_bytes
                with conn_out.wlock:
                    OWN_RECORD.pack_into(scratch, 24, rec_head, t, t_cs, t_ce, _time_ns() + skew)
                    sock = conn_out.sock
                    parts = (head_view, records, own_view, slot.outview)
                    sent = sock.sendmsg(parts)  # send_parts, inlined
                    if sent < total:
                        sock.sendall(b"".join(bytes(q) for q in parts)[sent:])
            except (OSError, TimeoutError) as e:
                self._send_failed(frame, route[0], route[1], e)
            else:
                self.sent += 1
                st = self.state
                st[frame] = "sent"
                if len(st) > 8192:
                    self._trim_state()
            finally:
                free_append(slot)  # the slot is free again once its bytes are in the socket (_free_slot)
                if self.slot_waiters:
                    with self.slot_ready:
                        self.slot_ready.notify()
                send_lock.release()
            self.received += 1

    def _take_slot(self, frame):
        """A free slot, waiting while every one is inside the agent (back-pressure, as a full queue is);
        None (reported) after part_timeout seconds. (A slot freed just before this waiter registered is found
        by the next check, at most 50 ms later: the wait polls.)"""
        free = self.free_slots
        deadline = time.monotonic() + self.part_timeout
        with self.slot_ready:
            self.slot_waiters += 1
            try:
                while True:
                    try:
                        return free.pop()
                    except IndexError:  # none free (other readers pop without this lock)
                        pass
                    left = deadline - time.monotonic()
                    if left <= 0 or self.stop.is_set():
                        break
                    self.slot_ready.wait(min(left, 0.05))
            finally:
                self.slot_waiters -= 1
        self.report("stage %d (%s on %s): no free DMA buffer for frame %d within %.1f s"
                    % (self.stage, self.partition, self.board, frame & FRAME_MASK, self.part_timeout), frame)
        return None

    def _free_slot(self, item):
        """Give back the slot of a job or send item (its index 1): its frame left, or was dropped."""
        self.free_slots.append(item[1])
        if self.slot_waiters:  # a receiver found none free (rare): wake it
            with self.slot_ready:
                self.slot_ready.notify()

    def _compute_failed(self, frame, e):
        """The backend raised on `frame`: nothing is being computed any more, and the error goes to the host."""
        self.computing = None
        self.report("stage %d (%s on %s) failed on frame %d: %s: %s" % (
            self.stage, self.partition, self.board, frame & FRAME_MASK, type(e).__name__, e), frame, exc=e)

    def _queue_raw_frame(self, frame, slot, records, t):
        """A frame whose payload is in `slot`'s input buffer, arriving (t: ns, the agent's clock) while the agent
        is busy: it queues with its slot (records copied: they are a view of the reader's buffer) for the compute
        thread, and blocks when the queue is full (back-pressure). A frame that finds the agent idle is computed
        and sent by _read_raw itself."""
        self._set_state(frame, "queued for compute")
        self.compute_q.put((frame, slot, bytes(records), (t,)))
        self.received += 1

    def _compute_raw(self, job):
        frame, slot, records, arrivals = job
        if self.drop and frame & FRAME_MASK in self.drop:  # fault injection (tests): this frame vanishes here
            self.dropped += 1
            self._free_slot(job)
            self._set_state(frame, "dropped (fault injection)")
            self.log.warning("frame %d dropped by fault injection", frame & FRAME_MASK)
            return None
        self.computing = frame
        try:
            t_cs = _time_ns() + self.skew
            t0 = time.perf_counter_ns() if self.period_ns else 0
            self.backend.run_raw(slot)
            if self.period_ns:
                wait_until(t0 + self.period_ns)
            t_ce = _time_ns() + self.skew
        except Exception as e:
            self._free_slot(job)
            self._compute_failed(frame, e)
            return None
        self.computing = None
        self.done += 1
        return (frame, slot, records, arrivals, t_cs, t_ce)

    def _send_raw(self, frame, slot, records, arrivals, t_cs, t_ce):
        """Header, the earlier records, this partition's record and the output DMA buffer, in one sendmsg (no
        join, no copy of the output); the slot is free again once its bytes are in the socket."""
        try:
            c, to, key = self.routes[0]
            conn = self.host if key is None else self.links.get(key)
            if conn is None:
                conn = self._link(to)
            out = slot.outview
            scratch = self.scratch  # send_lock is held: the agent's one sender at a time
            FRAME_HEAD.pack_into(scratch, 0, FRAME_PREFIX, frame, self.stage, c.index, len(out), len(records) // 40 + 1)
            with conn.wlock:
                OWN_RECORD.pack_into(scratch, 24, self.rec_heads[0], arrivals[0], t_cs, t_ce, _time_ns() + self.skew)
                send_parts(conn.sock, (self.head_view, records, self.own_view, out), 64 + len(records) + len(out))
        except (OSError, TimeoutError) as e:
            self._send_failed(frame, c, to, e)
            return
        finally:
            self.free_slots.append(slot)  # _free_slot, inlined
            if self.slot_waiters:
                with self.slot_ready:
                    self.slot_ready.notify()
        self.sent += 1
        st = self.state
        st[frame] = "sent"
        if len(st) > 8192:
            self._trim_state()

    def _attach_host(self, conn, hello):
        # A new host starts a new session with its own tag: frames of earlier sessions still inside are
        # dropped where they are found (their tag differs), and neither a stale state nor a part left waiting
        # by an earlier stream can join a frame of the new one.
        session = hello.get("session")
        if hello.get("role") != "host" or isinstance(session, bool) or not isinstance(session, int) \
                or not 0 < session < (1 << wire.SESSION_BITS):
            raise ProtocolError("HELLO without a host role and a session tag (1..2^%d-1): %r"
                                % (wire.SESSION_BITS, hello))
        self.session = session
        with self.pending_lock:
            stale = len(self.pending)
            self.pending.clear()
        self.state = collections.OrderedDict()
        # the answer goes out before the connection becomes the host's: it is the first message the host reads
        # (a frame of the old session in its last step may still follow; the host drops it by its tag)
        conn.send(pack_message(PONG, payload=json.dumps(self.health()).encode()))
        with self.host_ready:
            self.host = conn
            self.host_ready.notify_all()
        self.log.info("host attached from %s (session %d%s)", conn.name, session,
                      ", %d incomplete frame(s) of the last one dropped" % stale if stale else "")
        while self.unreported:
            try:
                conn.send(self.unreported.popleft())
            except OSError:
                break

    def _on_lone_frame(self, frame, part, records, payload):
        """_on_frame for a partition with one link in and one out (every stage of a chain): a frame that finds
        the agent idle is computed and sent here, without a method call or a tuple per step. The general path
        costs a hop about 1 us more, 0.06 of a loopback round trip (benchmarks/agent_overhead.py)."""
        t = _time_ns() + self.skew
        if self.compute_backlog or self.send_backlog or self.drop or not self.compute_lock.acquire(False):
            return self._on_frame(frame, part, records, payload, t)
        try:
            if self.bypass:
                out = payload
                t_cs = t_ce = t
                self.done += 1
            else:
                item = self._compute((frame, (payload,), records, (t,)))
                if item is None:
                    self.received += 1
                    return
                out, t_cs, t_ce = item[1][0], item[4], item[5]
        finally:
            self.compute_lock.release()
        if not self.send_lock.acquire(False):  # another frame is being sent: this one queues behind it
            self._to_send((frame, (out,), records, (t,), t_cs, t_ce))
            self.received += 1
            return
        try:
            c, to, key = self.routes[0]
            conn = self.host if key is None else self.links.get(key)
            if conn is None:
                conn = self._link(to)
            n = len(out)
            lock = conn.wlock
            lock.acquire()
            try:
                # header and own record packed into the agent's scratch buffer (safe: send_lock is held), sent
                # with the records and payload in one sendmsg: no bytes objects, no join
                scratch = self.scratch
                FRAME_HEAD.pack_into(scratch, 0, FRAME_PREFIX, frame, self.stage, c.index, n, len(records) // 40 + 1)
                OWN_RECORD.pack_into(scratch, 24, self.rec_heads[0], t, t_cs, t_ce, _time_ns() + self.skew)
                send_parts(conn.sock, (self.head_view, records, self.own_view, out), 64 + len(records) + n)
            finally:
                lock.release()
        except (OSError, TimeoutError) as e:
            self._send_failed(frame, c, to, e)
            return
        finally:
            self.send_lock.release()
        self.sent += 1
        st = self.state
        st[frame] = "sent"
        if len(st) > 8192:
            self._trim_state()
        self.received += 1

    def _on_frame(self, frame, part, records, payload, t=None):
        if t is None:
            t = _time_ns() + self.skew
        if self.n_in == 1:
            job = (frame, (payload,), records, (t,))
        else:
            job = self._gather(frame, part, records, payload, t)
            if job is None:
                self.received += 1
                return
        # Receive, compute and send run in separate threads joined by bounded queues, so that with several
        # frames in flight they overlap. Whoever does a step holds its lock; a frame that finds a step's lock
        # free and its queue empty does that step at once in the thread it is in (run to completion): a lone
        # frame then crosses no thread hand-off, which keeps the per-hop latency near a bare socket echo.
        # (_on_lone_frame is the same for one link in and one out, inlined.) Counting is done after sending.
        if not self.compute_backlog and self.compute_lock.acquire(False):
            try:
                item = self._compute(job)
            finally:
                self.compute_lock.release()
            if item is not None:
                self._to_send(item)
        else:
            self._set_state(frame, "queued for compute")
            self.compute_q.put(_own(job))  # blocks when full: TCP back-pressure to the previous stage
        self.received += 1

    def _gather(self, frame, part, records, payload, t):
        """One part of a frame of several incoming links: the job once all parts are here, else None."""
        if part not in self.part_pos:
            self.report("frame %d arrived as part %d, this partition takes parts %s"
                        % (frame & FRAME_MASK, part, sorted(self.part_pos)), frame)
            return None
        with self.pending_lock:
            entry = self.pending.get(frame)
            if entry is None:
                entry = self.pending[frame] = [[None] * self.n_in, [], [0] * self.n_in, time.monotonic()]
            idx = self.part_pos[part]
            entry[0][idx] = bytes(payload)  # kept past this turn: copies of the views
            entry[1].append(bytes(records))
            entry[2][idx] = t
            if any(p is None for p in entry[0]):
                self._set_state(frame, "waiting for parts: have %d of %d"
                                % (sum(p is not None for p in entry[0]), self.n_in))
                return None
            del self.pending[frame]
        return (frame, entry[0], b"".join(entry[1]), entry[2])

    def _to_send(self, item):
        if not self.send_backlog and self.send_lock.acquire(False):
            try:
                self._send(*item)
            finally:
                self.send_lock.release()
        else:
            self._set_state(item[0], "computed, queued for sending")
            # may hold views of a receive buffer (_on_frame); raw-word items hold their slot and copied records
            self.send_q.put(item if self.raw else _own(item))

    def _compute_loop(self):
        while True:
            job = self.compute_q.get()
            if job is None:
                return
            if job[0] >> SESSION_SHIFT != self.session:  # queued before a new host attached
                self.stale_dropped += 1
                self._discard(job)
                continue
            with self.compute_lock:
                item = self._compute(job)
            if item is not None:
                self._to_send(item)

    def _send_loop(self):
        while True:
            item = self.send_q.get()
            if item is None:
                return
            if item[0] >> SESSION_SHIFT != self.session:
                self.stale_dropped += 1
                self._discard(item)
                continue
            with self.send_lock:
                self._send(*item)

    def _compute(self, job):
        frame, payloads, records, arrivals = job
        if self.drop and frame & FRAME_MASK in self.drop:  # fault injection (tests): this frame vanishes here
            self.dropped += 1
            self._set_state(frame, "dropped (fault injection)")
            self.log.warning("frame %d dropped by fault injection", frame & FRAME_MASK)
            return None
        if self.bypass:  # bytes forwarded as they came, nothing to compute or wait for: no compute time
            self.done += 1
            t = max(arrivals)  # when the last part was in
            return (frame, payloads, records, arrivals, t, t)
        backend = self.backend
        self.computing = frame  # a hung DMA or library leaves this for the host to find (see health)
        try:
            if backend.forward_bytes:
                t_cs = time.time_ns() + self.skew
                t0 = time.perf_counter_ns()
                outs = payloads
            elif self.run_payloads is not None:  # the backend maps bytes to its buffers itself (overlay values)
                t_cs = self.now()
                t0 = time.perf_counter_ns() if self.period_ns else 0
                outs = self.run_payloads(payloads, self.output_shape)
            else:
                x = assemble(self.inputs, [c.decode(p) for c, p in zip(self.inputs, payloads)])
                t_cs = self.now()
                t0 = time.perf_counter_ns() if self.period_ns else 0
                y = np.asarray(backend.run(x)).reshape(self.output_shape)
            if self.period_ns:
                wait_until(t0 + self.period_ns)
            t_ce = _time_ns() + self.skew
            if not backend.forward_bytes and self.run_payloads is None:
                outs = [c.encode(c.take(y)) for c in self.out_links]
        except Exception as e:
            self._compute_failed(frame, e)
            return None
        self.computing = None
        self.done += 1
        return (frame, outs, records, arrivals, t_cs, t_ce)

    def _send(self, frame, outs, records, arrivals, t_cs, t_ce):
        t_send = _time_ns() + self.skew
        # this partition's records (one per incoming link): the fixed fields are packed once, in __init__
        if self.n_in == 1:
            own = OWN_RECORD.pack(self.rec_heads[0], arrivals[0], t_cs, t_ce, t_send)
        else:
            own = b"".join(OWN_RECORD.pack(h, t_r, t_cs, t_ce, t_send) for h, t_r in zip(self.rec_heads, arrivals))
        nrec = len(records) // 40 + self.n_in
        stage = self.stage
        for (c, to, key), payload in zip(self.routes, outs):
            msg = b"".join((FRAME_HEAD.pack(FRAME_PREFIX, frame, stage, c.index, len(payload), nrec),
                            records, own, payload))
            conn = self.host if key is None else self.links.get(key)
            try:
                (conn or self._link(to)).send(msg)
            except (OSError, TimeoutError) as e:
                self._send_failed(frame, c, to, e)
                return
        self.sent += 1
        self._set_state(frame, "sent")

    def _send_failed(self, frame, c, to, e):
        self._drop_link(to)
        self.report("stage %d (%s on %s) cannot send frame %d to %s: %s"
                    % (self.stage, self.partition, self.board, frame & FRAME_MASK, _where(to, c), e), frame)

    def _link(self, to):
        if to == "host":
            host = self.host
            if host is not None:
                return host
            with self.host_ready:
                if self.host is None:
                    self.host_ready.wait_for(lambda: self.host is not None or self.stop.is_set(),
                                             timeout=self.connect_timeout)
                if self.host is None:
                    raise TimeoutError("no host attached within %.0f s" % self.connect_timeout)
                return self.host
        key = (to["host"], int(to["port"]))
        conn = self.links.get(key)
        if conn is not None:
            return conn
        deadline = time.monotonic() + self.connect_timeout
        while True:
            try:
                sock = wire.connect(key, self._secret(), self.connect_timeout, self.link_ids[key], self.my_peer_id)
                break
            except wire.AgentShed as e:  # the next agent sheds connections for a while: retry
                if time.monotonic() > deadline or self.stop.is_set():
                    raise OSError("next hop %s:%d: %s" % (key[0], key[1], e))
                time.sleep(0.05)
            except wire.AuthError as e:  # retrying would not help: another deployment's agent is there
                raise OSError("next hop %s:%d: %s" % (key[0], key[1], e))
            except (OSError, EOFError) as e:  # the next agent may still be starting
                if time.monotonic() > deadline or self.stop.is_set():
                    raise OSError("next hop %s:%d does not accept connections (%s)" % (key[0], key[1], e))
                time.sleep(0.05)
        conn = self.links[key] = Conn(sock, "%s:%d" % key)
        # the next hop never sends on this connection except to report a protocol problem: drain it
        threading.Thread(target=self._drain_link, args=(key, conn), daemon=True).start()
        return conn

    def _drain_link(self, key, conn):
        try:
            while conn.sock.recv(4096):
                pass
        except OSError:
            pass
        if self.links.get(key) is conn:
            self._drop_link(key)

    def _drop_link(self, to):
        key = "host" if to == "host" else (to["host"], int(to["port"])) if isinstance(to, dict) else to
        if key == "host":
            return
        conn = self.links.pop(key, None)
        if conn is not None:
            conn.close()

    def _housekeeping(self):
        """Frames whose other parts never came: report them (naming the missing links), free their memory."""
        while not self.stop.wait(0.25):
            now = time.monotonic()
            stale = []
            with self.pending_lock:
                for frame, entry in list(self.pending.items()):
                    if now - entry[3] > self.part_timeout:
                        stale.append((frame, entry))
                        del self.pending[frame]
            for frame, entry in stale:
                missing = [c.src for c, p in zip(self.inputs, entry[0]) if p is None]
                self.report("stage %d (%s on %s): frame %d waited %.1f s for its part(s) from %s, which never came"
                            % (self.stage, self.partition, self.board, frame & FRAME_MASK, self.part_timeout,
                               ", ".join(missing)), frame)


def _spare_fd():
    """A descriptor held in reserve: closed when accept runs out of them, to take and drop one connection."""
    try:
        return os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return None


def _own(item):
    """A job or send item with copies of the receive buffer's views: it waits in a queue past this turn."""
    frame, payloads, records = item[:3]
    return (frame, tuple(bytes(p) for p in payloads), bytes(records)) + item[3:]


def _where(to, c):
    return "the host" if to == "host" else "%s at %s:%s" % (c.dst, to["host"], to["port"])


# --- process entry point -----------------------------------------------------------------------------
def _write_pidfile(path):
    """Refuse to start twice; a pidfile left by a crashed agent is stale and replaced."""
    if os.path.exists(path):
        try:
            old = int(open(path).read().strip() or 0)
        except (OSError, ValueError):
            old = 0
        if old and old != os.getpid() and _alive(old):
            raise AgentConfigError("another agent (pid %d) runs with pidfile %s: stop it first" % (old, path))
    with open(path, "w") as f:
        f.write("%d\n" % os.getpid())


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return b"agent" in f.read()
    except OSError:
        return True


def main(argv=None):
    """Command line `agent.py CONFIG.json`: serve until SIGTERM, SIGINT or SHUTDOWN. Returns the exit status:
    0 after a clean stop, 2 for bad usage, an unreadable config or a start failure, 3 when another agent
    holds the pidfile."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python3 agent.py CONFIG.json", file=sys.stderr)
        return 2
    cfg_path = os.path.abspath(argv[0])
    base = os.path.dirname(cfg_path)
    try:
        with open(cfg_path) as f:
            cfg = AgentConfig.from_dict(json.load(f))
    except (OSError, ValueError, AgentConfigError) as e:
        print("agent: cannot read config %s: %s" % (cfg_path, e), file=sys.stderr)
        return 2
    part = cfg.partition
    log_path = config_path(cfg.log, base)
    pidfile = config_path(cfg.pidfile, base)
    logging.basicConfig(filename=log_path, level=logging.INFO,
                        format="%(asctime)s %(levelname)s [%(threadName)s] %(message)s")
    log = logging.getLogger("splitrack.agent")
    try:
        _write_pidfile(pidfile)
    except AgentConfigError as e:
        log.error("%s", e)
        print("agent: %s" % e, file=sys.stderr)
        return 3
    try:
        agent = Agent(cfg, base)
        port = agent.serve()
    except Exception as e:
        log.error("cannot start: %s", e, exc_info=not isinstance(e, AgentConfigError))
        print("agent %s: cannot start: %s" % (part, e), file=sys.stderr)
        os.unlink(pidfile)
        return 2
    signal.signal(signal.SIGTERM, lambda *a: threading.Thread(target=agent.shutdown, daemon=True).start())
    signal.signal(signal.SIGINT, lambda *a: threading.Thread(target=agent.shutdown, daemon=True).start())
    print(json.dumps({"ready": True, "port": port, "pid": os.getpid()}), flush=True)
    try:
        while not agent.stop.wait(0.5):
            pass
        agent.stopped.wait(5)  # the shutdown thread logs its last line before the process exits
    finally:
        try:
            os.unlink(pidfile)
        except OSError:
            pass
        logging.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
