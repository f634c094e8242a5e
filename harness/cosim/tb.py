"""cocotb testbench for a partition or a whole plan: cocotbext-axi sources and sinks on the host interfaces,
a protocol checker (and an AxiStreamMonitor) on every interface, random backpressure and idle insertion.

It is driven by a JSON file named in $SPLITRACK_COSIM_CONFIG (written by harness/cosim/sim.py) and writes
its findings to the report path named there; the Python side turns them into verdicts and measurements.
Two phases, with a reset between them: "measure" (no stalls anywhere: latency and initiation interval) and
"stress" (random pauses at the sources, random backpressure at the sinks, random stalls on every link;
FIFO high-water marks).
"""
from __future__ import annotations

import json
import logging
import os
import random
import time

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge
from cocotbext.axi import AxiStreamBus, AxiStreamFrame, AxiStreamMonitor, AxiStreamSink, AxiStreamSource

MAX_VIOLATIONS = 20


def _int(sig):
    v = sig.value
    try:
        return int(v)
    except ValueError:
        return None  # X or Z


class Checker:
    """AXI-stream rules on every beat of one interface, plus the contract's framing and the expected data."""

    def __init__(self, dut, iface: dict, sig: dict, clock, counter):
        self.name = iface["name"]
        self.expected = iface["expected"]  # frames of [tdata, tkeep, tlast]
        self.sig = {k: getattr(dut, v) for k, v in sig.items() if v}
        self.clock = clock
        self.counter = counter
        self.violations = []
        self.n_violations = 0
        self.reset_phase()

    def reset_phase(self):
        """Forget the frames and beats seen (at each phase's reset); violations are kept across phases."""
        self.frame = 0
        self.beat = 0
        self.prev = None  # (tdata, tkeep, tlast) of a beat offered and not taken
        self.times = []   # (first beat cycle, last beat cycle) per frame
        self.first = None

    def flag(self, msg):
        """Count a violation and keep its message (with the cycle) for the first MAX_VIOLATIONS (20)."""
        self.n_violations += 1
        if len(self.violations) < MAX_VIOLATIONS:
            self.violations.append(f"cycle {self.counter[0]}: {self.name}: {msg}")

    async def run(self):
        """Watch the interface at every rising clock edge, forever: flags X/Z on tvalid after reset, and a beat
        withdrawn or changed while stalled (the AXI4-Stream handshake of ARM IHI 0051A: once TVALID is high the
        transfer stays until TREADY); each accepted beat goes to beat_accepted."""
        s = self.sig
        has_ready = "tready" in s
        while True:
            await RisingEdge(self.clock)
            valid = _int(s["tvalid"])
            if valid is None:
                if self.counter[1]:  # only after reset
                    self.flag("tvalid is X/Z")
                continue
            ready = _int(s["tready"]) if has_ready else 1
            if self.prev is not None:
                if not valid:
                    self.flag("tvalid dropped before tready (beat withdrawn)")
                else:
                    now = (_int(s["tdata"]), _int(s["tkeep"]) if "tkeep" in s else None, _int(s["tlast"]))
                    if now != self.prev:
                        self.flag("tdata/tkeep/tlast changed while stalled (tvalid high, tready low)")
            if not valid:
                self.prev = None
                continue
            data = _int(s["tdata"])
            keep = _int(s["tkeep"]) if "tkeep" in s else None
            last = _int(s["tlast"]) if "tlast" in s else None
            if not ready:
                self.prev = (data, keep, last)
                continue
            self.prev = None
            self.beat_accepted(data, keep, last)

    def beat_accepted(self, data, keep, last):
        """Check one accepted beat against the expected frames (tdata, tkeep, tlast on the contract's last beat
        only) and record each frame's (first beat, last beat) cycle numbers."""
        cyc = self.counter[0]
        if self.frame >= len(self.expected):
            self.flag(f"extra beat after the {len(self.expected)} expected frames (duplicated or spurious data)")
            return
        frame = self.expected[self.frame]
        want_data, want_keep, want_last = frame[self.beat]
        n = len(frame)
        if self.beat == 0:
            self.first = cyc
        if data is None:
            self.flag(f"frame {self.frame} beat {self.beat}: tdata has X/Z bits")
        elif data != want_data:
            self.flag(f"frame {self.frame} beat {self.beat}: tdata {data:#x}, expected {want_data:#x}")
        if keep is not None and keep != want_keep:
            self.flag(f"frame {self.frame} beat {self.beat}: tkeep {keep:#x}, contract says {want_keep:#x}")
        if last is not None and bool(last) != bool(want_last):
            where = f"tlast on beat {self.beat} of {n}" if last else f"no tlast on beat {self.beat}, the last of {n}"
            self.flag(f"frame {self.frame}: {where} (contract: tlast on beat {n - 1} only)")
        self.beat += 1
        if self.beat == n:
            self.times.append((self.first, cyc))
            self.frame += 1
            self.beat = 0

    def finish_phase(self, phase):
        """Flag a phase that ended with frames missing or a partial frame (beats lost, or a hang)."""
        if self.frame != len(self.expected) or self.beat:
            self.flag(f"{phase}: {self.frame} of {len(self.expected)} frames complete"
                      + (f", {self.beat} beats of a partial frame (beats lost)" if self.beat else " (beats lost or hang)"))


def _pause(rng, p):
    while True:
        yield rng.random() < p


@cocotb.test()
async def cosim(dut):
    """The cocotb test: 100 MHz clock (10 ns), reset, then per phase of $SPLITRACK_COSIM_CONFIG send every
    frame, wait for the sinks (up to budget_cycles), collect cycles, per-frame beat times, FIFO high-water
    marks and received frames into the JSON report. Fails (AssertionError) when any violation was found."""
    cfg = json.loads(open(os.environ["SPLITRACK_COSIM_CONFIG"]).read())
    clk = getattr(dut, cfg["clock"])
    rst = getattr(dut, cfg["reset"])
    rst_active = 0 if cfg.get("reset_active_low", True) else 1
    cocotb.start_soon(Clock(clk, 10, unit="ns").start())
    counter = [0, False]  # cycle, out of reset

    async def count():
        while True:
            await RisingEdge(clk)
            counter[0] += 1

    cocotb.start_soon(count())
    stall = getattr(dut, cfg["stall"]) if cfg.get("stall") else None
    rng = random.Random(cfg.get("seed", 1))

    checkers, sources, sinks, monitors = {}, {}, {}, {}
    for iface in cfg["interfaces"]:
        sig = iface["signals"]
        if iface["check"]:
            ch = Checker(dut, iface, sig, clk, counter)
            checkers[iface["name"]] = ch
            cocotb.start_soon(ch.run())
        bus = AxiStreamBus.from_prefix(dut, iface["prefix"])
        if iface["role"] == "source":
            sources[iface["name"]] = (AxiStreamSource(bus, clk, rst, reset_active_level=bool(rst_active)), iface)
        elif iface["role"] == "sink":
            sinks[iface["name"]] = (AxiStreamSink(bus, clk, rst, reset_active_level=bool(rst_active)), iface)
        elif cfg.get("axis_monitors"):
            monitors[iface["name"]] = AxiStreamMonitor(bus, clk, rst, reset_active_level=bool(rst_active))

    for obj in [s for s, _ in sources.values()] + [s for s, _ in sinks.values()] + list(monitors.values()):
        obj.log.setLevel(logging.WARNING)  # one INFO line per frame per interface drowns the log
    report = {"phases": {}, "violations": [], "framing_errors": 0}

    async def reset():
        counter[1] = False
        rst.value = rst_active
        if stall is not None:
            stall.value = 0
        await ClockCycles(clk, 8)
        rst.value = 1 - rst_active
        await ClockCycles(clk, 2)
        counter[1] = True

    t_begin = time.perf_counter()
    for phase in cfg["phases"]:
        t_phase = time.perf_counter()
        await reset()
        for ch in checkers.values():
            ch.reset_phase()
        prng = random.Random(rng.random())
        for src, iface in sources.values():
            src.set_pause_generator(_pause(prng, phase["pause"]) if phase["pause"] else None)
        for snk, iface in sinks.values():
            snk.set_pause_generator(_pause(prng, phase["backpressure"]) if phase["backpressure"] else None)
            snk.clear()
        if stall is not None:
            stall.value = int(phase.get("stall", 0))
        start = counter[0]
        for src, iface in sources.values():
            for frame in iface["payloads"]:
                await src.send(AxiStreamFrame(bytes.fromhex(frame)))
        n_frames = cfg["frames"]
        budget = phase["budget_cycles"]
        got = {}
        while True:
            await RisingEdge(clk)
            got = {name: snk.count() for name, (snk, _) in sinks.items()}
            if all(v >= n_frames for v in got.values()):
                break
            if counter[0] - start > budget:
                report["violations"].append(
                    f"{phase['name']}: timeout after {budget} cycles: sinks got "
                    + ", ".join(f"{k} {v}/{n_frames}" for k, v in got.items()) + " frames (hang or beats lost)")
                break
        await ClockCycles(clk, 20)  # let stray beats show up
        end = counter[0]
        fifo = {}
        for k, inst in cfg.get("fifos", {}).items():
            fifo[k] = int(getattr(dut, inst).high_water.value)
        ferr = _int(getattr(dut, cfg["framing_errors"])) if cfg.get("framing_errors") else 0
        if ferr:
            report["framing_errors"] |= ferr
            report["violations"].append(f"{phase['name']}: framing error flagged by a deserialiser (mask {ferr:#x}): "
                                        "tlast not on the contract's last beat")
        for ch in checkers.values():
            ch.finish_phase(phase["name"])
        received = {}
        for name, (snk, iface) in sinks.items():
            frames = []
            while not snk.empty():
                fr = snk.recv_nowait()
                frames.append(bytes(fr.tdata).hex())
            received[name] = frames
        report["phases"][phase["name"]] = {
            "cycles": end - start,
            "seconds": time.perf_counter() - t_phase,
            "times": {name: ch.times for name, ch in checkers.items()},
            "fifo_high_water": fifo,
            "received": received,
            "monitored_frames": {name: m.count() for name, m in monitors.items()},
        }
        for name, m in monitors.items():  # cocotbext-axi's own framing (by tlast) must agree
            if m.count() != n_frames:
                report["violations"].append(f"{phase['name']}: AxiStreamMonitor on {name} saw {m.count()} frames "
                                            f"(by tlast), {n_frames} were sent")
        for m in monitors.values():
            m.clear()
    for ch in checkers.values():
        report["violations"] += ch.violations
        if ch.n_violations > len(ch.violations):
            report["violations"].append(f"{ch.name}: ... {ch.n_violations - len(ch.violations)} more violations")
    report["sim_cycles"] = counter[0]
    report["tb_seconds"] = time.perf_counter() - t_begin
    with open(cfg["report"], "w") as f:
        json.dump(report, f)
    assert not report["violations"], f"{len(report['violations'])} violations, first: {report['violations'][0]}"
