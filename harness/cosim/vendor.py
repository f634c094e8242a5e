"""Vendor RTL: the Verilog Vivado HLS exported for a partition, on the same testbench as our own RTL.

Put the exported Verilog files (e.g. hls4ml's `myproject_prj/solution1/impl/verilog/*.v`) in
`<plan>/<partition>/vendor_rtl/`, or point $SPLITRACK_VENDOR_RTL at a folder with one sub-folder per partition.
Ports are mapped by prefix, as cocotbext-axi does: the input whose name ends in `_tdata` (any case) names the
slave interface (`in_r_TDATA` -> prefix `in_r`), the output one the master; the clock is ap_clk/aclk/clk and the
reset ap_rst_n/aresetn/rst_n (active low) or ap_rst/rst/reset (active high).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from splitting.contract import Contract, assemble
from splitting.errors import UserError
from splitting.plan import Plan

from . import sim

SIGNALS = ("tdata", "tkeep", "tvalid", "tready", "tlast")
_MODULE = re.compile(r"\bmodule\s+(\w+)\s*(?:#\s*\(.*?\)\s*)?\((.*?)\)\s*;(.*?)\bendmodule", re.S)
_DECL = re.compile(r"\b(input|output|inout)\b\s*(?:wire|reg|logic)?\s*(?:signed)?\s*(\[[^\]]*\])?\s*([\w\s,]+?)(?=;|\)|\binput\b|\boutput\b|$)",
                   re.S)


class VendorRTLError(UserError):
    """Vendor RTL (e.g. an HLS export) that cannot be cosimulated: no AXI-stream top found, or ambiguous ports."""

    pass


@dataclass
class PortMap:
    """How a vendor RTL top's ports map to the shell's AXI-stream signals: clock, reset (and its polarity),
    slave (input) and master (output) signal names."""

    top: str
    clock: str
    reset: str
    reset_active_low: bool
    slave: Dict[str, str]   # tdata/tkeep/... -> actual port name
    master: Dict[str, str]
    slave_prefix: str
    master_prefix: str


def vendor_dir(plan: Plan, name: str) -> Optional[Path]:
    """The folder holding a partition's vendor Verilog, or None when there is none."""
    env = os.environ.get("SPLITRACK_VENDOR_RTL")
    candidates = ([Path(env) / name] if env else []) + ([plan.path(f"{name}/vendor_rtl")] if plan.root else [])
    for c in candidates:
        if c.is_dir() and any(c.glob("*.v")):
            return c
    return None


def _strip_comments(text: str) -> str:
    return re.sub(r"//[^\n]*", "", re.sub(r"/\*.*?\*/", "", text, flags=re.S))


def modules(files: List[Path]) -> Dict[str, Dict[str, str]]:
    """module name -> {port name: direction}, from ANSI or non-ANSI Verilog headers."""
    out: Dict[str, Dict[str, str]] = {}
    for f in files:
        text = _strip_comments(Path(f).read_text(errors="replace"))
        for m in _MODULE.finditer(text):
            name, header, body = m.group(1), m.group(2), m.group(3)
            ports: Dict[str, str] = {}
            for src in (header, body):
                for d in _DECL.finditer(src):
                    for p in re.split(r"[\s,]+", d.group(3).strip()):
                        if re.fullmatch(r"[A-Za-z_]\w*", p) and p not in ("wire", "reg", "logic", "signed"):
                            ports.setdefault(p, d.group(1))
            out[name] = ports
    return out


def _pick(ports: Dict[str, str], names, direction="input") -> Optional[str]:
    low = {p.lower(): p for p, d in ports.items() if d == direction}
    for n in names:
        if n in low:
            return low[n]
    return None


def map_ports(files: List[Path], top: Optional[str] = None) -> PortMap:
    """Find the AXI-stream top among the modules of `files` (a module with *_tdata inputs and outputs; `top`
    chooses one by name) and map its ports. Raises VendorRTLError when none or several fit."""
    mods = modules(files)
    cands = []
    for name, ports in mods.items():
        ins = [p for p, d in ports.items() if d == "input" and p.lower().endswith("_tdata")]
        outs = [p for p, d in ports.items() if d == "output" and p.lower().endswith("_tdata")]
        if ins and outs:
            cands.append((name, ins, outs))
    if top:
        cands = [c for c in cands if c[0] == top]
    if not cands:
        raise VendorRTLError("no module with an AXI-stream input and output (ports ending in _tdata) in "
                             f"{', '.join(str(f) for f in files)}: export the design with axi_stream interfaces")
    if len(cands) > 1:
        axi = [c for c in cands if c[0].endswith("_axi")]  # hls4ml VivadoAccelerator's wrapper
        if len(axi) != 1:
            raise VendorRTLError(f"several candidate top modules ({', '.join(c[0] for c in cands)}): name one")
        cands = axi
    name, ins, outs = cands[0]
    if len(ins) != 1 or len(outs) != 1:
        raise VendorRTLError(f"{name}: {len(ins)} input and {len(outs)} output AXI streams; one of each is supported")
    ports = mods[name]

    def group(tdata: str, direction: str) -> Dict[str, str]:
        prefix = tdata[: -len("_tdata")]
        found = {}
        for s in SIGNALS:
            for p in ports:
                if p.lower() == f"{prefix}_{s}".lower():
                    found[s] = p
        for s in ("tdata", "tvalid", "tready"):
            if s not in found:
                raise VendorRTLError(f"{name}: AXI-stream {prefix} has no {s} port")
        return found

    clock = _pick(ports, ("ap_clk", "aclk", "clk", "clock"))
    rst_low = _pick(ports, ("ap_rst_n", "aresetn", "rst_n", "resetn"))
    rst_high = _pick(ports, ("ap_rst", "rst", "reset"))
    if clock is None or (rst_low is None and rst_high is None):
        raise VendorRTLError(f"{name}: no clock (ap_clk/aclk/clk) or reset (ap_rst_n/aresetn/ap_rst) port")
    return PortMap(name, clock, rst_low or rst_high, rst_low is not None, group(ins[0], "input"),
                   group(outs[0], "output"), ins[0][:-6], outs[0][:-6])


def partition_config(plan: Plan, name: str, values: Dict[str, np.ndarray], pm: PortMap,
                     frames: int, stress: dict, data_width: int) -> dict:
    """Testbench config for one partition behind `pm`: its input frames in, its emulated outputs expected."""
    part = plan.partition(name)
    links = plan.inputs_of(name)
    ins = assemble(links, [c.take(values[c.src]) for c in links])
    cin = Contract("host", name, tuple(part.input_shape), part.input_precision, data_width=data_width)
    cout = Contract(name, "host", tuple(part.output_shape), part.output_precision, data_width=data_width)
    p = cin.packing
    valid = (p.beats - 1) * p.bytes_per_beat + bin(p.last_tkeep).count("1")
    budget = int(40 * frames * (p.beats + cout.packing.beats) + 20000)
    return {
        "clock": pm.clock, "reset": pm.reset, "reset_active_low": pm.reset_active_low, "frames": frames, "seed": 1,
        "interfaces": [
            {"name": "in", "prefix": pm.slave_prefix, "role": "source", "check": True, "signals": pm.slave,
             "expected": [[[d, k, int(l)] for d, k, l in cin.beats(v)] for v in ins],
             "payloads": [cin.encode(v)[:valid].hex() for v in ins]},
            {"name": "out", "prefix": pm.master_prefix, "role": "sink", "check": True, "signals": pm.master,
             "expected": [[[d, k, int(l)] for d, k, l in cout.beats(v)] for v in values[name]], "payloads": []},
        ],
        "phases": [{"name": "measure", "pause": 0.0, "backpressure": 0.0, "budget_cycles": budget},
                   {"name": "stress", "pause": stress["pause"], "backpressure": stress["backpressure"],
                    "budget_cycles": budget}],
    }


def cosimulate_vendor(plan: Plan, name: str, folder: Path, sim_name: str = "verilator", n_frames: int = 4,
                      top: Optional[str] = None, log=print) -> dict:
    """Run the partition's vendor RTL on our testbench; returns the testbench report plus the port map."""
    from splitting.chain import emulation_runner, run_chain

    from .cosim import STRESS, default_frames

    files = sorted(Path(folder).glob("*.v"))
    pm = map_ports(files, top)
    log(f"  vendor RTL {pm.top}: slave {pm.slave_prefix}, master {pm.master_prefix}, clock {pm.clock}, "
        f"reset {pm.reset} ({'active low' if pm.reset_active_low else 'active high'})")
    x = default_frames(plan, n_frames)
    keep: Dict[str, np.ndarray] = {}
    run_chain(plan, x, emulation_runner(plan), keep=keep)
    values = dict(keep, host=x)
    cfg = partition_config(plan, name, values, pm, n_frames, STRESS, plan.links[0].data_width)
    build_dir = sim.build(sim_name, [str(f) for f in files], pm.top, {}, log=log, vlt_extra=())
    report = sim.run(sim_name, build_dir, pm.top, cfg)
    report["port_map"] = pm.__dict__
    return report
