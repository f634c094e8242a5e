"""Controls measured in every run beside the rack: what the machine itself did, so that a slower machine is
not taken for a slower plan.

- `loopback echo`: a raw TCP echo on 127.0.0.1 (a separate Python process that reads 64 bytes and writes them
  back; TCP_NODELAY on both ends): the host's own network stack and scheduler, nothing of splitrack's.
- `python loop`: a fixed pure-Python workload (the same bytecode every run): this host's CPU as a Python program
  sees it, in every run (the Keras CPU reference of `bench` is a control too, when it was measured).
- `probe BOARD`: the round trip (t4 - t1) of a clock probe to each board's agent: the link to the board and the
  board's own responsiveness, without any compute.
- host load (`HostLoad`): the load average at the start, the CPU count, and the CPUs kept busy during the run
  by all processes (/proc/stat) and by this process (getrusage): "other" is the rest (a virtual rack's boards
  included, as they are other processes).

Each control is sampled before and after the measurement and pooled, so that a load that changes during the
run shows in both. Figures in microseconds (attribution.stats: p50, p90, p99, max, mean, jitter, n).
"""
from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

import numpy as np

from .attribution import probe_partitions, stats

ECHO_BYTES = 64
# the echo server: standard library only, started with -S (no site import: it starts in ~20 ms)
_ECHO_SERVER = r"""
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(1)
sys.stdout.write("%d\n" % s.getsockname()[1]); sys.stdout.flush()
s.settimeout(30)
c, _ = s.accept()
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while True:
    d = c.recv(65536)
    if not d:
        break
    c.sendall(d)
"""


def loopback_echo(n: int = 100, warmup: int = 10) -> List[float]:
    """Round trips (ns) of ECHO_BYTES bytes to a raw TCP echo process on 127.0.0.1, one at a time.
    Raises OSError when the echo process cannot be started or reached."""
    proc = subprocess.Popen([sys.executable, "-S", "-c", _ECHO_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            raise OSError("the loopback echo process did not start")
        with socket.create_connection(("127.0.0.1", int(line)), timeout=10) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            msg, buf = b"x" * ECHO_BYTES, bytearray(ECHO_BYTES)
            view = memoryview(buf)
            out = []
            for i in range(warmup + n):
                t0 = time.perf_counter_ns()
                s.sendall(msg)
                got = 0
                while got < ECHO_BYTES:
                    k = s.recv_into(view[got:])
                    if not k:
                        raise OSError("the loopback echo process closed the connection")
                    got += k
                if i >= warmup:
                    out.append(time.perf_counter_ns() - t0)
        return out
    finally:
        proc.kill()
        proc.wait()


def _cpu_work() -> int:
    # a fixed amount of interpreter work (~0.3 ms here): integer arithmetic and a list, no allocation growth
    acc = 0
    for i in range(4000):
        acc = (acc + i * i) % 1000003
    return acc


def cpu_loop(n: int = 30, warmup: int = 3) -> List[float]:
    """Wall times (ns) of a fixed pure-Python workload, `n` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        _cpu_work()
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        _cpu_work()
        out.append(time.perf_counter_ns() - t0)
    return out


def board_probes(pipe, wiring, n: int = 16) -> Dict[str, List[float]]:
    """Per board, the round trips (t4 - t1, ns) of `n` clock probes through an open Pipeline."""
    out: Dict[str, List[float]] = {}
    for board, part in probe_partitions(wiring).items():
        rtts = []
        for _ in range(n):
            t1, _, _, t4 = pipe.probe(part)
            rtts.append(t4 - t1)
        out[f"probe {board}"] = rtts
    return out


class HostLoad:
    """The host's load over an interval: `HostLoad()` starts it, `stop()` returns the figures (a dict):
    load_avg (1, 5, 15 min at the start), cpus, seconds, busy_cpus (CPUs kept busy by every process, mean over
    the interval), own_cpus (this process and its waited-for children), other_cpus (busy minus own; a virtual
    rack's boards are other processes). busy/own/other are None where /proc/stat is not readable."""

    def __init__(self):
        self.t0 = time.monotonic()
        self.stat0 = _proc_stat()
        self.own0 = _own_cpu_s()
        try:
            self.load = [round(x, 2) for x in os.getloadavg()]
        except OSError:
            self.load = None

    def stop(self) -> Dict[str, object]:
        """The figures from the start to now (see the class)."""
        dt = max(time.monotonic() - self.t0, 1e-9)
        stat1 = _proc_stat()
        own = (_own_cpu_s() - self.own0) / dt
        out = {"load_avg": self.load, "cpus": os.cpu_count(), "seconds": round(dt, 3),
               "busy_cpus": None, "own_cpus": round(own, 3), "other_cpus": None}
        if self.stat0 is not None and stat1 is not None:
            busy0, total0 = self.stat0
            busy1, total1 = stat1
            if total1 > total0:
                busy = (busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1)
                out["busy_cpus"] = round(busy, 3)
                out["other_cpus"] = round(max(busy - own, 0.0), 3)
        return out


def _proc_stat():
    """(busy, total) jiffies of all CPUs from /proc/stat, None when unreadable."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    total = sum(v[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return total - idle, total


def _own_cpu_s() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


class Controls:
    """Samples of every control, taken by `sample()` (before and after a measurement) and summed up by
    `summary()`: {control name: attribution.stats in us}. A control that fails (an echo process that cannot
    start) is left out with its reason in `errors`, never guessed."""

    def __init__(self):
        self.samples: Dict[str, List[float]] = {}
        self.errors: Dict[str, str] = {}

    def _add(self, name: str, fn: Callable[[], List[float]]) -> None:
        try:
            self.samples.setdefault(name, []).extend(fn())
        except OSError as e:
            self.errors[name] = str(e)

    def sample(self, pipe=None, wiring=None) -> "Controls":
        """One round of every control (the board probes only with an open `pipe` and its `wiring`)."""
        self._add("loopback echo", loopback_echo)
        self._add("python loop", cpu_loop)
        if pipe is not None:
            try:
                for name, v in board_probes(pipe, wiring).items():
                    self.samples.setdefault(name, []).extend(v)
            except (OSError, TimeoutError) as e:
                self.errors["probes"] = str(e)
        return self

    def summary(self) -> Dict[str, Dict[str, float]]:
        """{control: stats (us)} of every control with samples."""
        return {k: stats(np.asarray(v, dtype=np.float64)) for k, v in self.samples.items() if v}


def format_controls(controls: Optional[Dict[str, Dict]], host: Optional[Dict]) -> str:
    """One line of the controls' p50 (us) and one of the host's load, for bench's and run's output."""
    out = []
    if controls:
        out.append("controls (p50 us): " + ", ".join(f"{k} {v['p50']:.1f}" for k, v in controls.items()))
    if host:
        out.append(f"host: {host.get('cpus')} CPUs, load average {host.get('load_avg')}, busy "
                   f"{_cpus(host.get('busy_cpus'))} CPUs during the run (this process {_cpus(host.get('own_cpus'))}, "
                   f"other processes {_cpus(host.get('other_cpus'))})")
    return "\n".join(out)


def _cpus(v) -> str:
    return "?" if v is None else f"{v:.2f}"
