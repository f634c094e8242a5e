#!/usr/bin/env python3
"""splitrack board agent: receives frames, runs one partition, forwards the result.

One file, Python 3.8+, standard library and numpy (plus `pynq` for the overlay backend on a real board).
On a board it sits beside `contract.py` and `emulation.py` (copies of `splitting/contract.py` and
`splitting/emulation.py`) and is started as

    python3 agent.py CONFIG.json

It prints one line to stdout when it listens: `{"ready": true, "port": P, "pid": N}`, then logs to its log file
only. SIGTERM or a SHUTDOWN message stop it cleanly (pidfile removed, exit status 0).

Config (JSON, plain data; relative paths are relative to the config file's folder)
------------------------------------------------------------------------------------
    board           str   board name, used in every error message
    partition       str   partition name
    partition_id    int   small integer naming the partition in timestamp records (0..65533)
    partition_ids   {name: int} of every partition of the plan (names the producers of incoming links)
    stage           int   stage index of the partition in the plan
    plan_hash       str   hash of the plan this agent belongs to (answered by ping)
    listen          {"host": "0.0.0.0", "port": 7700}    port 0: any free port (see the ready line)
    backend         one of
                    {"kind": "emulation", "library": "lib.so", "project": "myproject", "n_in": 64, "n_out": 10}
                        the partition's hls4ml emulation library (virtual boards; bit-accurate)
                    {"kind": "overlay", "bitfile": "p.bit", "hwh": "p.hwh", "n_in": 64, "n_out": 10,
                     "dma": "hier_0.axi_dma_0", "in_dtype": "float32", "out_dtype": "float32"}
                        a real PYNQ-Z2: pynq.Overlay (the .hwh must sit beside the .bit, same name), DMA
                        buffers allocated once; *_dtype is the AXI data type of the hls4ml accelerator
                        wrapper: "float32", or "int8"/"int16"/"int32" when the wrapper moves raw ap_fixed
                        words (the agent then writes and reads raw words of the links' fixed-point types)
                    {"kind": "fast", "model": "partition.fast.npz", "check_frames": 4, + the emulation keys}
                        virtual boards: harness/fast_model.py's vectorised bit-exact model, used only if it
                        equals the emulation library on the check frames at start (else the library runs)
                    {"kind": "passthrough", "decode": false}
                        transport tests only: the output is the assembled input. With "decode": false and
                        one link in, one out, of the same encoding, the payload bytes are forwarded unchanged
    output_shape    [int, ...]  the partition's output tensor shape (no batch axis)
    inputs          [Contract.to_dict(), ...]   incoming links; assembled in `index` order
    outputs         [{"contract": Contract.to_dict(), "to": {"host": "10.0.0.3", "port": 7700}}, ...]
                    "to": "host" sends on the connection of the host that attached (HELLO) to this agent
    timing          optional {"cycles": N, "clock_mhz": 100}: a frame's compute takes at least N / clock
                    (the time the real FPGA would take); waits by sleeping, then spinning the last few us
    clock_skew_ns   optional int (virtual boards): added to every timestamp this agent reports
    in_flight       frames held in each internal queue (receive -> compute -> send), default 8
    connect_timeout seconds to keep retrying a next hop that does not accept yet, default 10
    part_timeout    seconds a frame may wait for its other parts before it is reported lost, default 10
    log             log file, default "agent-<partition>.log"
    pidfile         pid file, default "agent-<partition>.pid"
    faults          optional, tests only: {"drop_frames": [frame ids]} frames received and then never sent

Wire (TCP, TCP_NODELAY; all integers little-endian)
---------------------------------------------------
    header   "<2sBBqHHIH2x" (24 bytes): magic b"SR", version 1, message type, frame id, stage, part,
             payload length, number of timestamp records
    records  n x "<hHHHqqqq" (40 bytes): stage, partition id, source (partition id of the incoming link's
             producer, HOST_ID for the host), flags (0), t_recv, t_compute_start, t_compute_end, t_send:
             int64 ns of the board's time.time_ns() + clock_skew_ns. A partition appends one record per
             incoming link (t_recv: that link's arrival; compute and send times shared), so consumers of
             several links tell when each part arrived. Agents forward earlier records as bytes, unparsed;
             a consumer of several links forwards the records of all its parts.
    payload  FRAME: exactly `Contract.encode` bytes of the link the frame travels on; `part` is that link's
             `index` in the consumer's assembly, `stage` the producer's stage (HOST_STAGE for the host).
             Other types carry JSON (PING, PONG, HELLO, ERROR) or "<q"/"<qqq" int64 timestamps (PROBE).

    FRAME 1    a frame of a link (host -> first stage, board -> board, last stage -> host)
    ERROR 2    JSON {board, partition, stage, frame, message}: sent to the attached host, never swallowed
    PROBE 3    host -> agent: t1; PROBE_REPLY 4 agent -> host: t1, t2 (receive), t3 (send), agent clock
    PING 5     JSON {} or {"frame": id}; PONG 6: JSON health (partition, plan hash, frames done, free memory,
               and the state of the asked frame on this board)
    SHUTDOWN 7 stop the agent
    HELLO 8    JSON {"role": "host"}: this connection is the host's: frames for "host" and errors go to it.
               It starts a new session: frame ids may start again, so states of earlier frames are forgotten
"""
from __future__ import annotations

import collections
import itertools
import json
import logging
import os
import queue
import signal
import socket
import struct
import sys
import threading
import time
import traceback

import numpy as np

try:  # on a board: copies beside this file; in the repository: the splitting package
    import contract as _contract  # type: ignore
except ImportError:  # pragma: no cover - depends on where the agent runs
    from splitting import contract as _contract

assemble = _contract.assemble


Contract = _contract.Contract  # its derived properties are cached: encode/decode per frame stay cheap

_time_ns = time.time_ns  # one global lookup per timestamp on the per-frame path
MAGIC = b"SR"
VERSION = 1
HEADER = struct.Struct("<2sBBqHHIH2x")
RECORD = struct.Struct("<hHHHqqqq")
RECORD_HEAD = struct.Struct("<hHHH")  # a record's fixed fields, packed once per agent ...
OWN_RECORD = struct.Struct("<8sqqqq")  # ... then given as 8 bytes with the timestamps: the same layout as RECORD
FRAME_HEAD = struct.Struct("<4sqHHIH2x")  # HEADER, with magic, version and type given as 4 bytes (FRAME_PREFIX)
PROBE_REQ = struct.Struct("<q")
PROBE_REP = struct.Struct("<qqq")
FRAME, ERROR, PROBE, PROBE_REPLY, PING, PONG, SHUTDOWN, HELLO = 1, 2, 3, 4, 5, 6, 7, 8
FRAME_PREFIX = MAGIC + bytes((VERSION, FRAME))
TYPE_NAMES = {FRAME: "FRAME", ERROR: "ERROR", PROBE: "PROBE", PROBE_REPLY: "PROBE_REPLY", PING: "PING",
              PONG: "PONG", SHUTDOWN: "SHUTDOWN", HELLO: "HELLO"}
HOST_STAGE = 0xFFFF
HOST_ID = 0xFFFF
MAX_PAYLOAD = 64 << 20  # refuse absurd lengths: a corrupted header must not make us allocate gigabytes


class ProtocolError(Exception):
    """Bytes on a connection that are not splitrack agent messages."""


class AgentConfigError(Exception):
    """A config file the agent cannot run with."""


# --- wire helpers (the host side imports these too) ---------------------------------------------------
def pack_message(mtype, frame=0, stage=0, part=0, payload=b"", records=b""):
    """One message as bytes: header, timestamp records (packed, see pack_records), payload."""
    return b"".join((HEADER.pack(MAGIC, VERSION, mtype, frame, stage, part, len(payload), len(records) // 40),
                     records, payload))


def pack_records(records):
    """Timestamp records (tuples of RECORD fields) -> bytes. Agents forward the records of earlier stages
    as bytes, unparsed, and append their own: only the host unpacks them."""
    return b"".join(RECORD.pack(*r) for r in records)


def unpack_records(blob):
    return list(RECORD.iter_unpack(blob))


class Reader:
    """Buffered exact reads from a socket: usually one recv per message instead of one per field."""

    def __init__(self, sock, size=1 << 16):
        self.sock = sock
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)  # kept: a recv_into per message, no new view each time
        self.start = 0
        self.end = 0

    def read(self, n):
        if self.end - self.start < n:
            self._fill(n)
        out = self.buf[self.start:self.start + n]
        self.start += n
        return out

    def _fill(self, n):
        """Make at least n bytes available from self.start (compacts the buffer, grows it if needed)."""
        start, end = self.start, self.end
        if start == end:  # all consumed (a lone frame's usual case): read from the buffer's beginning
            self.start = self.end = end = 0
        elif start:
            end -= start
            self.buf[:end] = self.buf[start:start + end]
            self.start, self.end = 0, end
        if len(self.buf) < n:  # a new, larger buffer: views handed out on the old one stay valid
            grown = bytearray(max(n, 2 * len(self.buf)))
            grown[:end] = self.buf[:end]
            self.buf, self.view = grown, memoryview(grown)
        view, recv_into = self.view, self.sock.recv_into
        while end < n:  # state stays consistent if recv times out (host-side readers use timeouts)
            k = recv_into(view[end:] if end else view)
            if not k:
                raise EOFError("connection closed by peer")
            end += k
            self.end = end

    def message(self, copy=True):
        """-> (type, frame, stage, part, records (packed bytes), payload bytearray).
        copy=False: records and payload are memoryviews of the receive buffer, valid only until the next
        call (the agent's per-frame path, which forwards or decodes them before reading on)."""
        s, end = self.start, self.end
        if s == end:  # nothing buffered (a lone frame's usual case): one recv at the buffer's beginning
            end = self.sock.recv_into(self.view)
            if not end:
                raise EOFError("connection closed by peer")
            s = self.start = 0
            self.end = end
        if end - s < 24:
            self._fill(24)
            s, end = 0, self.end
        buf = self.buf
        magic, version, mtype, frame, stage, part, length, nrec = HEADER.unpack_from(buf, s)
        if magic != MAGIC or version != VERSION or length > MAX_PAYLOAD or nrec > 4096:
            raise _bad_header(magic, version, length, nrec)
        p = s + 24 + 40 * nrec
        e = p + length
        if end < e:
            self._fill(e - s)  # compacts: the message now starts at 0
            buf, p, e, s = self.buf, p - s, e - s, 0
        self.start = e
        if copy:
            return mtype, frame, stage, part, buf[s + 24:p], buf[p:e]
        view = self.view
        return mtype, frame, stage, part, view[s + 24:p], view[p:e]


def _bad_header(magic, version, length, nrec):
    if magic != MAGIC or version != VERSION:
        return ProtocolError("bad magic/version %r/%r: the peer is not a splitrack agent of wire version %d"
                             % (magic, version, VERSION))
    return ProtocolError("header announces %d payload bytes and %d records: refusing" % (length, nrec))


def set_socket_options(sock):
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


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
        late = []
        for _ in range(sleeps):
            t = time.perf_counter_ns()
            time.sleep(sleep_ns / 1e9)
            late.append(time.perf_counter_ns() - t - sleep_ns)
        self.late_ns = max(0, sorted(late)[sleeps // 10])
        return self.late_ns

    def wait_until(self, deadline_ns):
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
    kind = "passthrough"

    def __init__(self, cfg, inputs, outputs):
        self.forward_bytes = (not cfg.get("decode", False) and len(inputs) == 1 and len(outputs) == 1
                              and outputs[0].select is None and _same_encoding(inputs[0], outputs[0]))

    def run(self, x):
        return np.asarray(x, dtype=np.float64)


def _same_encoding(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and a.data_width == b.data_width


class EmulationBackend:
    kind = "emulation"
    forward_bytes = False

    def __init__(self, cfg, base):
        try:
            import emulation as _emulation  # type: ignore
        except ImportError:  # pragma: no cover
            from splitting import emulation as _emulation
        lib = _path(cfg["library"], base)
        if not os.path.isfile(lib):
            raise AgentConfigError("emulation library %s not found: upload the partition's artifact" % lib)
        self.lib = _emulation.EmulationLib(lib, cfg["project"], cfg["n_in"], cfg["n_out"])

    def run(self, x):
        return self.lib.run(x)


class OverlayBackend:
    """A real PYNQ-Z2: the partition's bitstream, its AXI DMA, and two DMA buffers allocated once."""

    kind = "overlay"
    forward_bytes = False

    def __init__(self, cfg, base, inputs, outputs):
        from pynq import Overlay, allocate  # only on a board

        bit = _path(cfg["bitfile"], base)
        if not os.path.isfile(bit):
            raise AgentConfigError("bitstream %s not found: upload the partition's artifact" % bit)
        self.overlay = Overlay(bit)  # pynq finds the .hwh beside the .bit
        dma = self.overlay
        for name in cfg.get("dma", "hier_0.axi_dma_0").split("."):
            dma = getattr(dma, name)
        self.send, self.recv = dma.sendchannel, dma.recvchannel
        self.in_dtype = np.dtype(cfg.get("in_dtype", "float32"))
        self.out_dtype = np.dtype(cfg.get("out_dtype", "float32"))
        self.inbuf = allocate(shape=(int(cfg["n_in"]),), dtype=self.in_dtype)
        self.outbuf = allocate(shape=(int(cfg["n_out"]),), dtype=self.out_dtype)
        self.out_fixed = outputs[0].fixed if outputs else None
        self.in_fixed = inputs[0].fixed if inputs else None

    def run(self, x):
        x = np.asarray(x).reshape(-1)
        if self.in_dtype.kind == "f":
            self.inbuf[:] = x
        else:  # the wrapper takes raw ap_fixed words: quantise as the contract does
            self.inbuf[:] = self.in_fixed.to_raw(x).astype(self.in_dtype)
        self.send.transfer(self.inbuf)
        self.recv.transfer(self.outbuf)
        self.send.wait()
        self.recv.wait()
        if self.out_dtype.kind == "f":
            return np.array(self.outbuf, dtype=np.float64)
        return self.out_fixed.from_raw(np.array(self.outbuf, dtype=np.int64))


def _path(p, base):
    p = os.path.expanduser(str(p))
    return p if os.path.isabs(p) else os.path.join(base, p)


# --- the agent ---------------------------------------------------------------------------------------
class Conn:
    """One TCP connection: a reader and a write lock (frames, replies and errors may share it)."""

    def __init__(self, sock, name):
        self.sock = sock
        self.name = name
        self.reader = Reader(sock)
        self.wlock = threading.Lock()
        self.closed = False

    def send(self, data):
        with self.wlock:
            self.sock.sendall(data)

    def close(self):
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class Agent:
    def __init__(self, cfg, base="."):
        self.cfg = cfg
        self.base = base
        try:
            self.board = str(cfg["board"])
            self.partition = str(cfg["partition"])
            self.partition_id = int(cfg.get("partition_id", 0))
            self.stage = int(cfg["stage"])
            self.plan_hash = str(cfg.get("plan_hash", ""))
            self.inputs = sorted((Contract.from_dict(c) for c in cfg["inputs"]), key=lambda c: c.index)
            self.outputs = [(Contract.from_dict(o["contract"]), o["to"]) for o in cfg["outputs"]]
            # (contract, destination, key of its connection in self.links; None: the host's connection)
            self.routes = [(c, to, None if to == "host" else (to["host"], int(to["port"])))
                           for c, to in self.outputs]
            self.output_shape = tuple(int(s) for s in cfg["output_shape"])
            listen = cfg.get("listen", {})
            self.listen_addr = (listen.get("host", "0.0.0.0"), int(listen.get("port", 0)))
        except (KeyError, TypeError, ValueError) as e:
            raise AgentConfigError("config is missing or has a bad field (%s: %s): see the agent's docstring"
                                   % (type(e).__name__, e))
        if not self.inputs or not self.outputs:
            raise AgentConfigError("config needs at least one incoming and one outgoing link")
        self.part_ids = {c.index: self._src_id(c) for c in self.inputs}
        self.part_pos = {c.index: i for i, c in enumerate(self.inputs)}
        self.n_in = len(self.inputs)
        self.lone = self.n_in == 1 and len(self.outputs) == 1  # one link in, one out: see _on_lone_frame
        # the fixed fields of this partition's record per incoming link: stage, partition id, source id, flags
        self.rec_heads = [RECORD_HEAD.pack(self.stage, self.partition_id, self.part_ids[c.index], 0)
                          for c in self.inputs]
        self.skew = int(cfg.get("clock_skew_ns", 0))
        timing = cfg.get("timing") or None
        self.period_ns = int(round(timing["cycles"] * 1000.0 / timing.get("clock_mhz", 100.0))) if timing else 0
        self.in_flight = max(1, int(cfg.get("in_flight", 8)))
        self.connect_timeout = float(cfg.get("connect_timeout", 10.0))
        self.part_timeout = float(cfg.get("part_timeout", 10.0))
        self.drop = set(int(f) for f in (cfg.get("faults") or {}).get("drop_frames", ()))
        self.log = logging.getLogger("splitrack.agent")
        self.backend = None
        self.bypass = False  # set by load_backend: bytes forwarded unchanged, no timing model
        self.computing = None  # the frame id the backend is running now
        self.stop = threading.Event()
        self.compute_q = queue.Queue(self.in_flight)
        self.send_q = queue.Queue(self.in_flight)
        # the queues' deques: empty means nothing waits (read without taking the queue's lock)
        self.compute_backlog, self.send_backlog = self.compute_q.queue, self.send_q.queue
        self.compute_lock = threading.Lock()  # held by whichever thread computes a frame (one at a time)
        self.send_lock = threading.Lock()  # held by whichever thread sends a frame
        self.out_links = [c for c, _ in self.outputs]
        self.pending = {}  # frame id -> [parts by index, records, arrival ns by index, first arrival monotonic]
        self.pending_lock = threading.Lock()
        self.state = {}  # frame id -> what happened to it here (the latest 4096 to 8192 frames)
        self.host = None  # the Conn of the host that said HELLO
        self.host_ready = threading.Condition()
        self.links = {}  # (host, port) -> Conn of a next hop
        self.conns = set()
        # frame counters: attributes, not a dict, as they are counted on the per-frame path (see `counters`)
        self.received = self.done = self.sent = self.errors = self.dropped = 0
        self.unreported = collections.deque(maxlen=64)  # errors raised before any host attached
        self.started = time.time()
        self.listener = None

    def _src_id(self, c):
        ids = self.cfg.get("partition_ids", {})
        return HOST_ID if c.src == "host" else int(ids.get(c.src, HOST_ID - 1))

    @property
    def counters(self):
        return {"received": self.received, "done": self.done, "sent": self.sent, "errors": self.errors,
                "dropped": self.dropped}

    # -- helpers --
    def now(self):
        return time.time_ns() + self.skew

    def _set_state(self, frame, what):
        st = self.state
        st[frame] = what
        if len(st) > 8192:
            self._trim_state()

    def _trim_state(self):
        """Forget the oldest half of the frame states (a dict keeps insertion order): memory stays bounded."""
        st = self.state
        for frame in list(itertools.islice(st, len(st) - 4096)):
            del st[frame]

    def report(self, message, frame=-1, exc=None):
        """Log an error and send it to the host: board, partition and stage named, never silent."""
        self.errors += 1
        if exc is not None:
            self.log.error("frame %s: %s\n%s", frame, message, "".join(traceback.format_exception(
                type(exc), exc, exc.__traceback__)))
        else:
            self.log.error("frame %s: %s", frame, message)
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
        h = {"board": self.board, "partition": self.partition, "stage": self.stage, "plan_hash": self.plan_hash,
             "pid": os.getpid(), "uptime_s": round(time.time() - self.started, 3),
             "backend": self.backend.kind if self.backend else None, "frames_done": self.done,
             "counters": dict(self.counters), "free_memory": free_memory_bytes(),
             "python": sys.version.split()[0], "queues": [self.compute_q.qsize(), self.send_q.qsize()],
             "waiting_for_parts": len(self.pending), "host_attached": self.host is not None}
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
        b = self.cfg.get("backend") or {}
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
            self.backend = OverlayBackend(b, self.base, self.inputs, [c for c, _ in self.outputs])
        else:
            raise AgentConfigError("backend kind %r: use emulation, fast, overlay or passthrough" % (kind,))
        self.bypass = self.backend.forward_bytes and not self.period_ns

    def serve(self):
        """Listen, start the threads, return the bound port. run() waits for the end."""
        self.load_backend()
        # a thread that has just received a frame waits for the GIL while another runs Python code; the default
        # 5 ms switch interval would then add up to 5 ms to a hop: an agent moves frames, switch sooner
        sys.setswitchinterval(0.0005)
        if self.period_ns:
            _reduce_timer_slack()
            self.log.info("timing model: sleeps wake %.0f us late here (calibrated)", PACER.calibrate() / 1e3)
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart at once after a crash
        srv.bind(self.listen_addr)
        srv.listen(64)
        self.listener = srv
        for target, name in ((self._accept_loop, "accept"), (self._compute_loop, "compute"),
                             (self._send_loop, "send"), (self._housekeeping, "housekeeping")):
            threading.Thread(target=target, name=name, daemon=True).start()
        port = srv.getsockname()[1]
        self.log.info("agent %s/%s (stage %d, plan %s) listening on %s:%d, backend %s, timing %s ns",
                      self.board, self.partition, self.stage, self.plan_hash, self.listen_addr[0], port,
                      self.backend.kind, self.period_ns or "none")
        return port

    def shutdown(self, drain_s=2.0):
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
        for c in list(self.conns) + list(self.links.values()):
            c.close()
        self.log.info("agent stopped: %s", self.counters)

    # -- threads --
    def _accept_loop(self):
        while not self.stop.is_set():
            try:
                sock, addr = self.listener.accept()
            except OSError:
                return
            set_socket_options(sock)
            conn = Conn(sock, "%s:%d" % addr[:2])
            self.conns.add(conn)
            threading.Thread(target=self._read_loop, args=(conn,), name="read " + conn.name, daemon=True).start()

    def _read_loop(self, conn):
        message = conn.reader.message
        on_frame = self._on_lone_frame if self.lone else self._on_frame
        try:
            while True:  # ends when the peer closes, or at shutdown when the socket is closed under it
                # views of the receive buffer, not copies: whatever keeps them past this turn copies them
                mtype, frame, stage, part, records, payload = message(False)
                if mtype == FRAME:
                    on_frame(frame, part, records, payload)
                elif mtype == PROBE:
                    t2 = self.now()
                    (t1,) = PROBE_REQ.unpack(payload)
                    with conn.wlock:
                        t3 = self.now()
                        conn.sock.sendall(pack_message(PROBE_REPLY, payload=PROBE_REP.pack(t1, t2, t3)))
                elif mtype == PING:
                    ask = json.loads(bytes(payload).decode() or "{}")
                    conn.send(pack_message(PONG, payload=json.dumps(self.health(ask)).encode()))
                elif mtype == HELLO:
                    self._attach_host(conn)
                elif mtype == SHUTDOWN:
                    self.log.info("shutdown requested by %s", conn.name)
                    threading.Thread(target=self.shutdown, daemon=True).start()
                    return
                else:
                    raise ProtocolError("unexpected message type %d" % mtype)
        except (EOFError, ConnectionError):
            pass
        except OSError:
            if not self.stop.is_set():
                self.log.info("connection %s lost", conn.name)
        except ProtocolError as e:
            self.report("connection %s: %s" % (conn.name, e))
        except Exception as e:  # a bug: say so, keep serving other connections
            self.report("receiving from %s failed: %s" % (conn.name, e), exc=e)
        finally:
            self.conns.discard(conn)
            if self.host is conn:
                self.host = None
            conn.close()

    def _attach_host(self, conn):
        # A new host starts a new session, whose frame ids start again at 0: forget the frames of earlier
        # sessions, so that neither a stale state misleads the diagnosis of a lost frame nor a part left
        # waiting by an earlier stream joins a new frame of the same id.
        with self.pending_lock:
            stale = len(self.pending)
            self.pending.clear()
        self.state = {}
        with self.host_ready:
            self.host = conn
            self.host_ready.notify_all()
        self.log.info("host attached from %s (a new session%s)", conn.name,
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
        if self.compute_backlog or self.send_backlog or frame in self.drop or not self.compute_lock.acquire(False):
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
            own = OWN_RECORD.pack(self.rec_heads[0], t, t_cs, t_ce, _time_ns() + self.skew)
            msg = b"".join((FRAME_HEAD.pack(FRAME_PREFIX, frame, self.stage, c.index, len(out), len(records) // 40 + 1),
                            records, own, out))
            lock = conn.wlock
            lock.acquire()
            try:
                conn.sock.sendall(msg)
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
                        % (frame, part, sorted(self.part_pos)), frame)
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
            self.send_q.put(_own(item))  # may hold views of a receive buffer (_on_frame)

    def _compute_loop(self):
        while True:
            job = self.compute_q.get()
            if job is None:
                return
            with self.compute_lock:
                item = self._compute(job)
            if item is not None:
                self._to_send(item)

    def _send_loop(self):
        while True:
            item = self.send_q.get()
            if item is None:
                return
            with self.send_lock:
                self._send(*item)

    def _compute(self, job):
        frame, payloads, records, arrivals = job
        if frame in self.drop:  # fault injection (tests): this frame vanishes here
            self.dropped += 1
            self._set_state(frame, "dropped (fault injection)")
            self.log.warning("frame %d dropped by fault injection", frame)
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
            else:
                x = assemble(self.inputs, [c.decode(p) for c, p in zip(self.inputs, payloads)])
                t_cs = self.now()
                t0 = time.perf_counter_ns() if self.period_ns else 0
                y = np.asarray(backend.run(x)).reshape(self.output_shape)
            if self.period_ns:
                wait_until(t0 + self.period_ns)
            t_ce = _time_ns() + self.skew
            if not backend.forward_bytes:
                outs = [c.encode(c.take(y)) for c in self.out_links]
        except Exception as e:
            self.computing = None
            self.report("stage %d (%s on %s) failed on frame %d: %s: %s"
                        % (self.stage, self.partition, self.board, frame, type(e).__name__, e), frame, exc=e)
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
                    % (self.stage, self.partition, self.board, frame, _where(to, c), e), frame)

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
                sock = socket.create_connection(key, timeout=self.connect_timeout)
                break
            except OSError as e:  # the next agent may still be starting
                if time.monotonic() > deadline or self.stop.is_set():
                    raise OSError("next hop %s:%d does not accept connections (%s)" % (key[0], key[1], e))
                time.sleep(0.05)
        sock.settimeout(None)
        set_socket_options(sock)
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
                            % (self.stage, self.partition, self.board, frame, self.part_timeout,
                               ", ".join(missing)), frame)


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
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python3 agent.py CONFIG.json", file=sys.stderr)
        return 2
    cfg_path = os.path.abspath(argv[0])
    base = os.path.dirname(cfg_path)
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        print("agent: cannot read config %s: %s" % (cfg_path, e), file=sys.stderr)
        return 2
    part = str(cfg.get("partition", "agent"))
    log_path = _path(cfg.get("log") or "agent-%s.log" % part, base)
    pidfile = _path(cfg.get("pidfile") or "agent-%s.pid" % part, base)
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
    finally:
        try:
            os.unlink(pidfile)
        except OSError:
            pass
        logging.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
