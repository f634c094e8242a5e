"""What a board's "compute" figure is, per partition: who computed (the agent's backend) and, beside it, the
FPGA compute the RTL cosimulation measured, so that nobody reads a virtual board's CPU time as the FPGA's.

A virtual board computes its partition on this machine's CPU (the bit-exact fast model, or the hls4ml emulation
library when the fast model does not cover a layer or fails its start-up check); a real PYNQ-Z2 runs the
partition's overlay. The backend a board really runs is the one its agent reports in its PONG (`backend`):
the configuration only names the one it was asked to run ("fast" falls back to "emulation" at start).

    sources = compute_sources(plan, wiring)       # {partition: ComputeSource}, agents asked over the network
    doc["compute"] = {p: s.to_dict() for p, s in sources.items()}
    print(format_sources(doc["compute"]))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

# backend kind -> (short label for tables, what the compute figure is)
BACKENDS = {
    "fast": ("CPU: fast model", "virtual board: this machine's CPU running the partition's bit-exact fast model "
                                "(harness/agent/fast_model.py), not the FPGA"),
    "emulation": ("CPU: hls4ml emulation", "virtual board: this machine's CPU running the partition's hls4ml "
                                           "emulation library (C simulation), not the FPGA"),
    "overlay": ("FPGA: PYNQ-Z2 overlay", "PYNQ-Z2 overlay: the partition's bitstream on the FPGA, with its AXI DMA "
                                         "transfers, timed by the board's CPU"),
    "passthrough": ("none: passthrough", "no compute: the passthrough backend forwards its input (transport test)"),
}


def describe(kind: Optional[str]) -> tuple:
    """(short label, description) of a backend kind; an unknown or missing kind says so."""
    return BACKENDS.get(kind or "", ("unknown", f"backend {kind!r}: not known to this splitrack"))


@dataclass
class ComputeSource:
    """What one partition's compute figure is.

    backend    the kind the agent runs (fast, emulation, overlay, passthrough)
    reported   True when the agent itself said so (PONG); False: taken from its configuration
    timing     the timing model ({"cycles": N, "clock_mhz": F}) that paces the compute, or None
    fpga       the RTL cosimulation's figures (harness.cosim.record.PartitionCycles.to_dict), or None
    fpga_note  why there is no FPGA figure, with the command that makes one ("" when there is)
    backend_note  what the agent said about its backend (a fast model's check, or why it fell back to the
               emulation library); "" when it said nothing
    """

    partition: str
    board: str
    backend: Optional[str]
    reported: bool
    timing: Optional[dict]
    fpga: Optional[dict]
    fpga_note: str
    backend_note: str = ""

    def to_dict(self) -> dict:
        """JSON-ready (what bench.json's "compute" and run.json's partitions hold)."""
        short, what = describe(self.backend)
        if self.backend_note:
            what += f" ({self.backend_note})"
        return {"board": self.board, "backend": self.backend, "backend_reported_by_agent": self.reported,
                "label": short + ("" if self.reported else " (configured)"), "what": what, "timing": self.timing,
                "fpga": self.fpga, "fpga_note": self.fpga_note, "backend_note": self.backend_note}


def reported_backends(wiring, timeout: float = 2.0) -> Dict[str, Tuple[Optional[str], str]]:
    """{partition: (the backend kind its agent reports in its PONG, its note)}: (None, "") for an agent that
    does not answer (or answers without one); the note is "" when the agent gives none (older agents), at
    most 300 characters. Each agent is asked over an authenticated connection (the wiring's secret)."""
    from harness.rack.agent_control import ping

    out: Dict[str, Tuple[Optional[str], str]] = {}
    for name, ep in wiring.endpoints.items():
        try:
            pong = ping(ep.host, ep.port, wiring.secret, timeout=timeout, ident=(wiring.agent_id(name), wiring.host_id()))
        except (OSError, ValueError):
            pong = {}
        kind, note = pong.get("backend"), pong.get("backend_note")
        out[name] = (kind if isinstance(kind, str) else None, note[:300] if isinstance(note, str) else "")
    return out


def compute_sources(plan, wiring, ask_agents: bool = True) -> Dict[str, ComputeSource]:
    """Per partition of `plan` (in plan order) on a started rack (`wiring`): its backend (as its agent reports
    it; the configured kind when the agent does not answer or `ask_agents` is False), its timing model, and
    the cosimulation's figures of the plan folder (harness.cosim.record.read)."""
    from harness.cosim import record

    told = reported_backends(wiring) if ask_agents and wiring.secret is not None else {}
    stored = record.read(plan)
    out = {}
    for p in plan.ordered_partitions():
        cfg = wiring.configs.get(p.name, {})
        kind, said = told.get(p.name, (None, ""))
        fig = stored.figures.get(p.name)
        note = stored.missing
        if not note and fig is None:
            note = f"not in the cosimulation's result (run: {record.command(plan)})"
        out[p.name] = ComputeSource(
            p.name, wiring.endpoints[p.name].board if p.name in wiring.endpoints else "?",
            kind or (cfg.get("backend") or {}).get("kind"), kind is not None, cfg.get("timing"),
            fig.to_dict() if fig is not None else None, note, said)
    return out


def _num(v) -> Optional[float]:
    """A number of a stored document, None for anything else (documents are read back from files)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _f(v, unit: str) -> str:
    v = _num(v)
    return "-" if v is None else f"{v:.0f} cycles" if unit == "cycles" else f"{v:.2f} us"


def fpga_text(src: dict) -> str:
    """The FPGA figure of one partition, one line: cycles and their time at the plan's clock, or the reason
    there is none (e.g. "not cosimulated (run: splitrack cosim plan/)")."""
    f = src.get("fpga")
    if not isinstance(f, dict) or not f:
        return str(src.get("fpga_note") or "not cosimulated")
    clock = _num(f.get("clock_ns"))
    at = f"at {clock:g} ns ({1e3 / clock:g} MHz)" if clock else "at an unknown clock (the plan's clock_period is bad)"
    parts = [f"frame latency {_f(f.get('frame_latency_cycles'), 'cycles')} = {_f(f.get('frame_latency_us'), 'us')}",
             f"II in the chain {_f(f.get('ii_cycles'), 'cycles')} = {_f(f.get('ii_us'), 'us')}"]  # measured chained: a slower partition further on can set it
    return f"{f.get('source', 'RTL cosimulation')}: " + ", ".join(parts) + f" {at}"


def format_sources(compute: Optional[Dict[str, dict]]) -> str:
    """The legend of the per-hop tables: per partition what its "board P compute" is, and beside it the FPGA
    compute from the RTL cosimulation (or why there is none). "" for a document without the field (older)."""
    if not compute:
        return ""
    lines: List[str] = ["what \"board P compute\" is, per partition (FPGA: the partition's cycles in the RTL "
                        "cosimulation at the plan's clock; timing closure at that clock is not checked here):"]
    for name, src in compute.items():
        what = src.get("what") or describe(src.get("backend"))[1]
        said = "" if src.get("backend_reported_by_agent", True) else " (as configured; the agent did not say)"
        t = src.get("timing") if isinstance(src.get("timing"), dict) else {}
        cycles, mhz = _num(t.get("cycles")), _num(t.get("clock_mhz", 100.0))
        paced = (f"; paced to at least {cycles:g} cycles at {mhz:g} MHz (the plan's estimate, not a measurement)"
                 if cycles is not None and mhz else "")
        lines.append(f"  {name} on {src.get('board', '?')}: {what}{said}{paced}")
        lines.append(f"  {' ' * len(name)}    FPGA: {fpga_text(src)}")
    return "\n".join(lines)


def fpga_short(src: dict) -> str:
    """The FPGA figure in a few words for a table cell: "FPGA (RTL cosim) 0.52 us" or "FPGA: not cosimulated"."""
    f = src.get("fpga") if isinstance(src.get("fpga"), dict) else {}
    us = _num(f.get("frame_latency_us"))
    if us is not None:
        return f"FPGA (RTL cosim) {us:.2f} us"
    return "FPGA: not cosimulated" if not f else "FPGA: not measured"


def hop_notes(compute: Optional[Dict[str, dict]]) -> Dict[str, str]:
    """{"board P compute": note} for the per-hop tables: who computed (e.g. "CPU: fast model, not FPGA time")
    and the FPGA figure beside it. Empty for a document without the field (older)."""
    out = {}
    for name, src in (compute or {}).items():
        label = src.get("label") or describe(src.get("backend"))[0]
        cpu = label.startswith("CPU")
        t = src.get("timing") if isinstance(src.get("timing"), dict) else {}
        paced = " (paced to the plan's cycle estimate)" if _num(t.get("cycles")) is not None else ""
        out[f"board {name} compute"] = f"{label}{paced}{', not FPGA time' if cpu else ''}; {fpga_short(src)}"
    return out
