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
    HELLO 8    JSON {"role": "host"}: this connection is the host's: frames for "host" and errors go to it
"""
from __future__ import annotations

import collections
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

MAGIC = b"SR"
VERSION = 1
HEADER = struct.Struct("<2sBBqHHIH2x")
RECORD = struct.Struct("<hHHHqqqq")
PROBE_REQ = struct.Struct("<q")
PROBE_REP = struct.Struct("<qqq")
FRAME, ERROR, PROBE, PROBE_REPLY, PING, PONG, SHUTDOWN, HELLO = 1, 2, 3, 4, 5, 6, 7, 8
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
        have = self.end - self.start
        if self.start:
            if have:
                self.buf[:have] = self.buf[self.start:self.end]
            self.start, self.end = 0, have
        if len(self.buf) < n:
            self.view.release()
            self.buf.extend(bytes(max(n, 2 * len(self.buf)) - len(self.buf)))
            self.view = memoryview(self.buf)
        view, recv_into = self.view, self.sock.recv_into
        while self.end < n:
            k = recv_into(view[self.end:])
            if not k:
                raise EOFError("connection closed by peer")
            self.end += k

    def message(self):
        """-> (type, frame, stage, part, records (packed bytes), payload bytearray)."""
        if self.end - self.start < 24:
            self._fill(24)
        buf, s = self.buf, self.start
        magic, version, mtype, frame, stage, part, length, nrec = HEADER.unpack_from(buf, s)
        if magic != MAGIC or version != VERSION:
            raise ProtocolError("bad magic/version %r/%r: the peer is not a splitrack agent of wire version %d"
                                % (magic, version, VERSION))
        if length > MAX_PAYLOAD or nrec > 4096:
            raise ProtocolError("header announces %d payload bytes and %d records: refusing" % (length, nrec))
        need = 24 + 40 * nrec + length
        if self.end - s < need:
            self._fill(need)
            buf, s = self.buf, self.start
        p = s + 24 + 40 * nrec
        self.start = s + need
        return mtype, frame, stage, part, buf[s + 24:p], buf[p:p + length]


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


def wait_until(deadline_ns, spin_ns=60000):
    """Sleep until `deadline_ns` (perf_counter_ns), spinning the last `spin_ns`: precise to a few us.
    The spin yields the GIL (sleep(0)) so the agent's other threads keep receiving and sending."""
    while True:
        rem = deadline_ns - time.perf_counter_ns()
        if rem <= 0:
            return
        if rem > spin_ns:
            time.sleep((rem - spin_ns) / 1e9)
        else:
            time.sleep(0)


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
        # the fixed fields of this partition's record per incoming link: stage, partition id, source id, flags
        self.rec_heads = [(self.stage, self.partition_id, self.part_ids[c.index], 0) for c in self.inputs]
        self.skew = int(cfg.get("clock_skew_ns", 0))
        timing = cfg.get("timing") or None
        self.period_ns = int(round(timing["cycles"] * 1000.0 / timing.get("clock_mhz", 100.0))) if timing else 0
        self.in_flight = max(1, int(cfg.get("in_flight", 8)))
        self.connect_timeout = float(cfg.get("connect_timeout", 10.0))
        self.part_timeout = float(cfg.get("part_timeout", 10.0))
        self.drop = set(int(f) for f in (cfg.get("faults") or {}).get("drop_frames", ()))
        self.log = logging.getLogger("splitrack.agent")
        self.backend = None
        self.stop = threading.Event()
        self.compute_q = queue.Queue(self.in_flight)
        self.send_q = queue.Queue(self.in_flight)
        self.compute_lock = threading.Lock()  # held by whichever thread computes a frame (one at a time)
        self.send_lock = threading.Lock()  # held by whichever thread sends a frame
        self.out_links = [c for c, _ in self.outputs]
        self.pending = {}  # frame id -> [parts by index, records, arrival ns by index, first arrival monotonic]
        self.pending_lock = threading.Lock()
        self.state = collections.OrderedDict()  # frame id -> what happened to it here (bounded)
        self.host = None  # the Conn of the host that said HELLO
        self.host_ready = threading.Condition()
        self.links = {}  # (host, port) -> Conn of a next hop
        self.conns = set()
        self.counters = {"received": 0, "done": 0, "sent": 0, "errors": 0, "dropped": 0}
        self.unreported = collections.deque(maxlen=64)  # errors raised before any host attached
        self.started = time.time()
        self.listener = None

    def _src_id(self, c):
        ids = self.cfg.get("partition_ids", {})
        return HOST_ID if c.src == "host" else int(ids.get(c.src, HOST_ID - 1))

    # -- helpers --
    def now(self):
        return time.time_ns() + self.skew

    def _set_state(self, frame, what):
        st = self.state
        st[frame] = what
        if len(st) > 4096:
            st.popitem(last=False)

    def report(self, message, frame=-1, exc=None):
        """Log an error and send it to the host: board, partition and stage named, never silent."""
        self.counters["errors"] += 1
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
             "backend": self.backend.kind if self.backend else None, "frames_done": self.counters["done"],
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
            h["frame_state"] = self.state.get(int(ask["frame"]), "unknown")
        return h

    # -- lifecycle --
    def load_backend(self):
        b = self.cfg.get("backend") or {}
        kind = b.get("kind")
        if kind == "passthrough":
            self.backend = PassthroughBackend(b, self.inputs, [c for c, _ in self.outputs])
        elif kind == "emulation":
            self.backend = EmulationBackend(b, self.base)
        elif kind == "overlay":
            self.backend = OverlayBackend(b, self.base, self.inputs, [c for c, _ in self.outputs])
        else:
            raise AgentConfigError("backend kind %r: use emulation, overlay or passthrough" % (kind,))

    def serve(self):
        """Listen, start the threads, return the bound port. run() waits for the end."""
        self.load_backend()
        # a thread that has just received a frame waits for the GIL while another runs Python code; the default
        # 5 ms switch interval would then add up to 5 ms to a hop: an agent moves frames, switch sooner
        sys.setswitchinterval(0.0005)
        if self.period_ns:
            _reduce_timer_slack()
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
        message, on_frame = conn.reader.message, self._on_frame
        try:
            while True:  # ends when the peer closes, or at shutdown when the socket is closed under it
                mtype, frame, stage, part, records, payload = message()
                if mtype == FRAME:
                    on_frame(frame, part, records, payload)
                elif mtype == PROBE:
                    t2 = self.now()
                    (t1,) = PROBE_REQ.unpack(payload)
                    with conn.wlock:
                        t3 = self.now()
                        conn.sock.sendall(pack_message(PROBE_REPLY, payload=PROBE_REP.pack(t1, t2, t3)))
                elif mtype == PING:
                    ask = json.loads(payload.decode() or "{}")
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
        with self.host_ready:
            self.host = conn
            self.host_ready.notify_all()
        self.log.info("host attached from %s", conn.name)
        while self.unreported:
            try:
                conn.send(self.unreported.popleft())
            except OSError:
                break

    def _on_frame(self, frame, part, records, payload):
        t = time.time_ns() + self.skew
        self.counters["received"] += 1
        if self.n_in == 1:
            self._submit((frame, (payload,), records, (t,)))
            return
        if part not in self.part_pos:
            self.report("frame %d arrived as part %d, this partition takes parts %s"
                        % (frame, part, sorted(self.part_pos)), frame)
            return
        with self.pending_lock:
            entry = self.pending.get(frame)
            if entry is None:
                entry = self.pending[frame] = [[None] * self.n_in, [], [0] * self.n_in, time.monotonic()]
            idx = self.part_pos[part]
            entry[0][idx] = payload
            entry[1].append(records)
            entry[2][idx] = t
            if any(p is None for p in entry[0]):
                self._set_state(frame, "waiting for parts: have %d of %d"
                                % (sum(p is not None for p in entry[0]), self.n_in))
                return
            del self.pending[frame]
        self._submit((frame, entry[0], b"".join(entry[1]), entry[2]))

    # Receive, compute and send run in separate threads joined by bounded queues, so that with several
    # frames in flight they overlap. Whoever does a step holds its lock; a frame that finds a step's lock free
    # and its queue empty does that step at once in the thread it is in (run to completion): a lone frame
    # then crosses no thread hand-off, which keeps the per-hop latency near a bare socket echo.
    def _submit(self, job):
        if not self.compute_q.queue and self.compute_lock.acquire(False):  # .queue: the deque, no lock taken
            try:
                item = self._compute(job)
            finally:
                self.compute_lock.release()
            if item is not None:
                self._to_send(item)
        else:
            self._set_state(job[0], "queued for compute")
            self.compute_q.put(job)  # blocks when full: TCP back-pressure to the previous stage

    def _to_send(self, item):
        if not self.send_q.queue and self.send_lock.acquire(False):
            try:
                self._send(item)
            finally:
                self.send_lock.release()
        else:
            self._set_state(item[0], "computed, queued for sending")
            self.send_q.put(item)

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
                self._send(item)

    def _compute(self, job):
        frame, payloads, records, arrivals = job
        if frame in self.drop:  # fault injection (tests): this frame vanishes here
            self.counters["dropped"] += 1
            self._set_state(frame, "dropped (fault injection)")
            self.log.warning("frame %d dropped by fault injection", frame)
            return None
        backend = self.backend
        try:
            if backend.forward_bytes and not self.period_ns:
                t_cs = t_ce = time.time_ns() + self.skew  # nothing to compute
                self.counters["done"] += 1
                return (frame, payloads, records, arrivals, t_cs, t_ce)
            self._set_state(frame, "computing")  # a hung DMA or library leaves this for the host to find
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
            t_ce = time.time_ns() + self.skew
            if not backend.forward_bytes:
                outs = [c.encode(c.take(y)) for c in self.out_links]
        except Exception as e:
            self.report("stage %d (%s on %s) failed on frame %d: %s: %s"
                        % (self.stage, self.partition, self.board, frame, type(e).__name__, e), frame, exc=e)
            return None
        self.counters["done"] += 1
        return (frame, outs, records, arrivals, t_cs, t_ce)

    def _send(self, item):
        frame, outs, records, arrivals, t_cs, t_ce = item
        t_send = time.time_ns() + self.skew
        if self.n_in == 1:
            recs = records + RECORD.pack(*self.rec_heads[0], arrivals[0], t_cs, t_ce, t_send)
        else:
            recs = records + b"".join(RECORD.pack(*h, t_r, t_cs, t_ce, t_send) for h, t_r in zip(self.rec_heads, arrivals))
        nrec = len(recs) // 40
        for (c, to), payload in zip(self.outputs, outs):
            msg = b"".join((HEADER.pack(MAGIC, VERSION, FRAME, frame, self.stage, c.index, len(payload), nrec),
                            recs, payload))
            try:
                conn = self.host if to == "host" else None
                conn = conn or self._link(to)
                with conn.wlock:
                    conn.sock.sendall(msg)
            except (OSError, TimeoutError) as e:
                self._drop_link(to)
                self.report("stage %d (%s on %s) cannot send frame %d to %s: %s"
                            % (self.stage, self.partition, self.board, frame, _where(to, c), e), frame)
                return
        self.counters["sent"] += 1
        self._set_state(frame, "sent")

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
