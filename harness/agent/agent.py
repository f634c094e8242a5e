"""splitrack board agent: receives frames, runs one partition, forwards the result.

Python 3.8+, standard library and numpy (plus `pynq` for the overlay backend on a real board). On a board it
sits in the package `harness.agent` (shipped whole, with `splitting.contract` and `splitting.emulation` at their
package paths: harness/agent/files.py, so that it imports the same modules on a board as on the host) beside
`wire.py` (the wire format and the authentication handshake), `agent_config.py` (its configuration),
`backends.py` (what computes a frame), `pacer.py` (the timing model's clock), `log_limit.py` and `pidfile.py`,
and is started as

    python3 -m harness.agent CONFIG.json

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

A frame takes three steps, each written once: receive (the read loop: its parts joined, in raw-word mode its
payload received into a DMA buffer), compute (the backend, paced by the timing model) and send; the last two
are `_advance`, which takes a frame as far as it can go in the thread it is in. Receive, compute and send run in
separate threads joined by bounded queues, so that with several frames in flight they overlap. Whoever does a
step holds its lock; a frame that finds a step's lock free and its queue empty does that step at once in the
thread it is in (run to completion): a lone frame then crosses no thread hand-off, which keeps the per-hop
latency near a bare socket echo.
"""
from __future__ import annotations

import collections
import errno
import json
import logging
import os
import queue
import socket
import sys
import threading
from struct import error as struct_error
import time
import traceback

import numpy as np

from harness.agent import wire
from harness.agent.agent_config import AgentConfig, AgentConfigError, config_path
from harness.agent.backends import make_backend
from harness.agent.log_limit import RateLimitedLog
from harness.agent.pacer import PACER, reduce_timer_slack
from splitting.contract import Contract, assemble  # Contract's derived properties are cached: cheap per frame

ProtocolError = wire.ProtocolError
wait_until = PACER.wait_until

_time_ns = time.time_ns  # one global lookup per timestamp on the per-frame path
_perf_ns = time.perf_counter_ns
# plain ints on the per-frame path (an IntEnum member compares slower)
FRAME, ERROR, PROBE, PROBE_REPLY, PING, PONG, SHUTDOWN, HELLO = (int(t) for t in (
    wire.MsgType.FRAME, wire.MsgType.ERROR, wire.MsgType.PROBE, wire.MsgType.PROBE_REPLY, wire.MsgType.PING,
    wire.MsgType.PONG, wire.MsgType.SHUTDOWN, wire.MsgType.HELLO))
OWN_RECORD, RECORD_HEAD, FRAME_HEAD, FRAME_PREFIX = wire.OWN_RECORD, wire.RECORD_HEAD, wire.FRAME_HEAD, wire.FRAME_PREFIX
PROBE_REQ, PROBE_REP = wire.PROBE_REQ, wire.PROBE_REP
pack_message = wire.pack_message
SESSION_SHIFT, FRAME_MASK = wire.SESSION_SHIFT, wire.FRAME_MASK
HOST_ID = wire.HOST_ID

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
        # set by load_backend, what the compute step does around the backend (see _bind_compute)
        self.bypass = False  # bytes forwarded unchanged, no timing model: nothing to compute or wait for
        self.raw = False  # overlay in raw-word mode: a frame's data is its DMA slot (see OverlayBackend)
        self.decode = self.run = self.encode = None
        self.free_slots = None  # raw-word mode: the DMA slots no frame holds
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
        # a frame's header and this partition's records (one per incoming link), packed in place by whoever
        # holds send_lock
        self.scratch = bytearray(24 + 40 * self.n_in)
        self.head_view, self.own_view = memoryview(self.scratch)[:24], memoryview(self.scratch)[24:]
        self.pending = {}  # frame id -> [parts by index, records, arrival ns by index, first arrival monotonic]
        self.pending_lock = threading.Lock()
        # frame id -> what happened to it here, unless sent, the latest 8192 frames: an ordered dict whose oldest
        # entry goes as a new one comes (a plain dict trimmed by half swung the agent's memory by a few hundred KiB)
        self.state = collections.OrderedDict()
        self.sent_frames = collections.deque(maxlen=8192)  # the ids of the latest frames sent (one C call a frame)
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
            h["frame_state"] = "computing" if f == self.computing else "sent" if f in self.sent_frames else \
                self.state.get(f, "unknown")
        return h

    # -- lifecycle --
    def load_backend(self):
        """Build the backend the config names (backends.make_backend) and bind what the compute step does
        around it. Raises AgentConfigError for an unknown kind or a missing library or bitstream."""
        # raw-word overlays: a DMA slot per frame that can be inside at once: both queues, one computing, one
        # sending, and the next receipt of each connection that carries frames (a few)
        self.backend = make_backend(self.cfg.backend, self.base, self.inputs, self.out_links,
                                    2 * self.in_flight + 6, self.log)
        self._bind_compute()
        # compute and send, written once, with what is constant for the agent's life bound as locals
        self._advance = self._advance_step()

    def _bind_compute(self):
        """What the compute step runs, decided once per backend: `decode` (payloads -> the assembled input),
        `run` (the backend) and `encode` (output -> payloads of the outgoing links), each None when the backend
        needs none. The compute window (t_cs to t_ce) holds `run` and the timing model's wait only."""
        backend = self.backend
        # bytes forwarded as they came, nothing to compute or wait for: such a frame skips the compute step (its
        # compute window is its arrival); with fault injection every frame still passes the compute step
        self.bypass = backend.forward_bytes and not self.period_ns and not self.drop
        self.raw = getattr(backend, "raw", False)
        self.decode = self.encode = None
        run_payloads = getattr(backend, "run_payloads", None)
        if self.raw:  # the payload is in the slot's input buffer, the output goes out from its output buffer
            self.free_slots = collections.deque(backend.slots)  # pop/append: atomic, no lock
            self.in_bytes = backend.in_bytes
            self.run = backend.run_raw  # returns the slot: the frame's outputs
        elif backend.forward_bytes:  # the payload bytes go out unchanged (timed by the timing model)
            self.run = _same
        elif run_payloads is not None:  # the backend maps the links' bytes onto its buffers itself
            shape = self.output_shape
            self.run = lambda payloads: run_payloads(payloads, shape)
        else:
            inputs, out_links, shape, run_values = self.inputs, self.out_links, self.output_shape, backend.run
            self.decode = lambda payloads: assemble(inputs, [c.decode(p) for c, p in zip(inputs, payloads)])
            self.run = lambda x: np.asarray(run_values(x)).reshape(shape)
            self.encode = lambda y: [c.encode(c.take(y)) for c in out_links]

    def serve(self):
        """Listen, start the threads, return the bound port. run() waits for the end."""
        self.load_backend()
        # a thread that has just received a frame waits for the GIL while another runs Python code; the default
        # 5 ms switch interval would then add up to 5 ms to a hop: an agent moves frames, switch sooner
        sys.setswitchinterval(0.0005)
        if self.period_ns:
            reduce_timer_slack()
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
        """The receive step, for one connection: each frame of the current session read, its parts joined, and
        handed to _advance; control messages answered."""
        if not self._authenticate(conn):
            self._forget(conn)
            return
        slot = None  # raw-word mode: the DMA slot whose input buffer the next frame's payload is received into
        try:
            reader = conn.reader
            message, message_into = reader.message, reader.message_into
            advance, on_control, raw_data, gather = self._advance, self._on_control, self._raw_data, self._gather
            raw, free, skew, lone = self.raw, self.free_slots, self.skew, self.n_in == 1
            parts = conn.parts  # the links whose frames this peer may send (its own)
            while True:  # ends when the peer closes, or at shutdown when the socket is closed under it
                # once this connection carried a frame (so the reader knows its records' size), a raw-word
                # frame's payload is received straight into a free slot, where the DMA reads it
                if raw and free and reader.expect_records is not None:
                    try:
                        slot = free.pop()
                    except IndexError:  # another connection's reader took the last one
                        slot = None
                # views of the receive buffer, not copies: whatever keeps them past this turn copies them
                if slot is None:
                    mtype, frame, stage, part, records, payload = message(False)
                else:
                    mtype, frame, stage, part, records, payload = message_into(slot.inview)
                if mtype == FRAME:
                    if part not in parts:  # only a link's producer sends its frames (a slot held: freed below)
                        raise ProtocolError("a frame on link %d from %s, which produces none of this agent's links "
                                            "%s" % (part, conn.role, sorted(parts)))
                    if raw and slot is None:
                        reader.expect_records = len(records) // 40
                    # the payload's size was bounded by the reader; its exact size is checked where it is decoded
                    # (or by the host when bytes are forwarded unchanged): not twice on the per-frame path
                    if frame >> SESSION_SHIFT == self.session:
                        t = _time_ns() + skew
                        arrivals = (t,)
                        if raw:  # the frame holds its slot now (refused, or copied into one, if not received there)
                            data = slot if slot is not None and payload is slot.inview else \
                                raw_data(frame, payload, slot)
                            slot = None
                        elif lone:
                            data = (payload,)
                        else:  # a part of a frame of several incoming links: the frame once all its parts are here
                            job = gather(frame, part, records, payload, t)
                            data = None
                            if job is not None:
                                _, data, records, arrivals = job
                        if data is not None:
                            advance(frame, data, records, arrivals)
                        self.received += 1
                        continue
                    self.stale_dropped += 1  # a frame of an earlier session (or none): nobody waits for it
                elif on_control(conn, mtype, payload):
                    return
                if slot is not None:  # received into it, never DMA'd
                    self._free_slot(slot)
                    slot = None
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
            if slot is not None:  # the connection ended while a slot waited for its next frame
                self._free_slot(slot)
            self._forget(conn)

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

    # -- the per-frame steps: compute and send (receive is the read loop) --------------------------------------
    def _advance_step(self):
        """_advance(frame, data, records, arrivals, computed=None, queued=False), made once by load_backend with the
        agent's constants bound (a frame pays for no attribute lookup of what never changes): takes one frame as
        far as it can go in this thread.

        Compute (unless `computed`, the frame's (outputs, t_cs, t_ce), is given): `data` (payloads by incoming link,
        or in raw-word mode the frame's DMA slot) through the backend; the compute window (t_cs to t_ce) holds
        the backend's run and the timing model's wait, not the decoding and encoding around it. A frame whose
        bytes go out unchanged with no timing model has nothing to compute (its window is its last part's
        arrival). A frame dropped by fault injection, or that the backend fails on (reported), goes no further.
        Send: each outgoing link's message (header, the records that came with the frame, this partition's
        records, the payload) in one sendmsg from the agent's scratch buffer (no bytes objects, no join); in
        raw-word mode the payload is the slot's output DMA buffer, and the slot is free again once its bytes
        are in the socket.

        A step whose lock another thread holds, or whose queue holds earlier frames, gets the frame through its
        queue instead (copies of the reader's views; blocking when full: TCP back-pressure). `queued`: the frame
        comes from the queue of its first step (the compute or send thread): it waits for that step's lock."""
        drop, skew, period, bypass, raw, lone = self.drop, self.skew, self.period_ns, self.bypass, self.raw, \
            self.n_in == 1
        decode, run, encode, own = self.decode, self.run, self.encode, self._own
        compute_backlog, compute_put = self.compute_backlog, self.compute_q.put
        compute_acquire, compute_release = self.compute_lock.acquire, self.compute_lock.release
        send_backlog, send_put = self.send_backlog, self.send_q.put
        send_acquire, send_release = self.send_lock.acquire, self.send_lock.release
        scratch, head_view, own_view = self.scratch, self.head_view, self.own_view
        n_in, rec_heads, stage = self.n_in, self.rec_heads, self.stage
        # (link index, key of its connection, destination, contract) per outgoing link; a list: the loop over it
        # is specialised
        routes, links = [(c.index, key, to, c) for c, to, key in self.routes], self.links
        free_append, sent_append = self.free_slots.append if raw else None, self.sent_frames.append
        pack_head, pack_own, rec0, own_size = FRAME_HEAD.pack_into, OWN_RECORD.pack_into, rec_heads[0], 40 * n_in

        def advance(frame, data, records, arrivals, computed=None, queued=False):
            # -- compute --
            if computed is not None:
                outs, t_cs, t_ce = computed
            elif bypass:  # nothing to compute
                self.done += 1
                t_cs = t_ce = arrivals[0] if lone else max(arrivals)
                outs = data
            else:
                if queued:
                    compute_acquire()
                elif compute_backlog or not compute_acquire(False):
                    self._set_state(frame, "queued for compute")
                    compute_put(own((frame, data, records, arrivals)))
                    return
                try:
                    if drop and frame & FRAME_MASK in drop:  # fault injection (tests): this frame vanishes here
                        self.dropped += 1
                        self._discard(data)
                        self._set_state(frame, "dropped (fault injection)")
                        self.log.warning("frame %d dropped by fault injection", frame & FRAME_MASK)
                        return
                    self.computing = frame  # a hung DMA or library leaves this for the host to find (see health)
                    try:
                        x = data if decode is None else decode(data)
                        t_cs = _time_ns() + skew
                        if period:
                            t0 = _perf_ns()
                            y = run(x)
                            wait_until(t0 + period)
                        else:
                            y = run(x)
                        t_ce = _time_ns() + skew
                        outs = y if encode is None else encode(y)
                    except Exception as e:
                        self._discard(data)
                        self._compute_failed(frame, e)
                        return
                    self.computing = None
                    self.done += 1
                finally:
                    compute_release()
            # -- send --
            if queued and computed is not None:
                send_acquire()
            elif send_backlog or not send_acquire(False):  # another frame is being sent: queue behind it
                self._set_state(frame, "computed, queued for sending")
                send_put(own((frame, outs, records, arrivals, t_cs, t_ce)))
                return
            try:
                # header and own record packed into the agent's scratch buffer (safe: send_lock is held), sent
                # with the records and payload in one sendmsg: no bytes objects, no join
                r = len(records)
                nrec = r // 40 + n_in
                size = 24 + r + own_size
                payloads = outs.outs if raw else outs  # a raw-word frame's outputs are its slot's output buffer
                # this partition's records, one per incoming link: one t_send for every outgoing link (the records
                # reach the host by every path, and must say the same)
                if n_in == 1:
                    pack_own(scratch, 24, rec0, arrivals[0], t_cs, t_ce, _time_ns() + skew)
                else:
                    t_send = _time_ns() + skew
                    for j in range(n_in):
                        pack_own(scratch, 24 + 40 * j, rec_heads[j], arrivals[j], t_cs, t_ce, t_send)
                c = to = None
                i = 0
                for index, key, to, c in routes:
                    payload = payloads[i]
                    i += 1
                    conn = self.host if key is None else links.get(key)
                    if conn is None:
                        conn = self._link(to)
                    n = len(payload)
                    pack_head(scratch, 0, FRAME_PREFIX, frame, stage, index, n, nrec)
                    lock = conn.wlock
                    lock.acquire()
                    try:
                        parts = (head_view, records, own_view, payload)
                        sock = conn.sock
                        sent = sock.sendmsg(parts)  # wire.send_parts, inlined: the rest when the socket took less
                        if sent < size + n:
                            sock.sendall(b"".join(bytes(q) for q in parts)[sent:])
                    finally:
                        lock.release()
            except (OSError, TimeoutError) as e:
                self._send_failed(frame, c, to, e)
                return
            finally:
                if raw:  # the slot is free again once its bytes are in the socket (_free_slot, inlined)
                    free_append(outs)
                    if self.slot_waiters:
                        self._wake_slot_waiter()
                send_release()
            self.sent += 1
            sent_append(frame)
        return advance

    def _raw_data(self, frame, payload, slot):
        """A raw-word frame's slot when its payload was not received into `slot` (every slot was taken, or it
        has another size): the payload copied into a free slot's input buffer (waiting for one); None when it is
        refused (the wrong size: never DMA'd) or no slot came free in time (reported)."""
        if len(payload) != self.in_bytes:  # refused before any DMA: the accelerator takes exactly this many
            if slot is not None:
                self._free_slot(slot)
            c = self.inputs[0]
            self.report("stage %d (%s on %s) refused frame %d: link %s->%s: payload of %d bytes, contract "
                        "says %d" % (self.stage, self.partition, self.board, frame & FRAME_MASK, c.src, c.dst,
                                     len(payload), self.in_bytes), frame)
            return None
        if slot is None:  # every slot was taken when this message came: wait for one, copy once
            slot = self._take_slot(frame)
            if slot is None:
                return None
            slot.inview[:] = payload
        return slot

    def _own(self, item):
        """A job or send item with copies of the receive buffer's views: it waits in a queue past this turn. (A
        raw-word frame's data is its slot, which it holds: only its records are copied.)"""
        frame, data, records = item[:3]
        if not self.raw:
            data = tuple(bytes(p) for p in data)
        return (frame, data, bytes(records)) + item[3:]

    def _discard(self, data):
        """A frame's data or outputs (a job's or send item's [1]) that go no further (an earlier session's,
        dropped, or failed): a raw-word frame gives its slot back."""
        if self.raw:
            self._free_slot(data)

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

    def _compute_loop(self):
        self._queue_loop(self.compute_q)

    def _send_loop(self):
        self._queue_loop(self.send_q)

    def _queue_loop(self, q):
        """The compute or send thread: the frames of its queue (None ends it) taken on with _advance, waiting
        for the step's lock; a frame queued before a new host attached is dropped (its slot given back)."""
        advance = self._advance
        while True:
            item = q.get()
            if item is None:
                return
            if item[0] >> SESSION_SHIFT != self.session:
                self.stale_dropped += 1
                self._discard(item[1])
            elif len(item) == 4:  # to compute: frame, data, records, arrivals
                advance(*item, queued=True)
            else:  # computed: frame, outputs, records, arrivals, t_cs, t_ce
                advance(item[0], item[1], item[2], item[3], item[1:2] + item[4:], queued=True)

    def _compute_failed(self, frame, e):
        """The backend raised on `frame`: nothing is being computed any more, and the error goes to the host."""
        self.computing = None
        self.report("stage %d (%s on %s) failed on frame %d: %s: %s" % (
            self.stage, self.partition, self.board, frame & FRAME_MASK, type(e).__name__, e), frame, exc=e)

    # -- raw-word mode's DMA slots --
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

    def _free_slot(self, slot):
        """Give a slot back: its frame left, or was dropped."""
        self.free_slots.append(slot)
        if self.slot_waiters:  # a receiver found none free (rare): wake it
            self._wake_slot_waiter()

    def _wake_slot_waiter(self):
        with self.slot_ready:
            self.slot_ready.notify()

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
        self.sent_frames.clear()
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


def _where(to, c):
    return "the host" if to == "host" else "%s at %s:%s" % (c.dst, to["host"], to["port"])


def _same(x):
    return x
