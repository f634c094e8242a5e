"""Cosimulate a plan in RTL: every partition's generated datapath in its AXI-stream shell, chained through
link FIFOs, checked beat by beat against the plan's hls4ml emulation; measured; FIFO depths sized.

    result = cosimulate(plan, sim="verilator")
    result.ok, result.partitions["s0"].latency, result.links[0].recommended_depth
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from splitting.contract import Contract, assemble
from splitting.errors import UserError
from splitting.plan import HOST, Plan

from . import netlist, record, rtlgen, sim
from .ops import partition_ops
from .bitexact import Agreement, Reference, compare_with_emulation

STRESS = {"stall": 64, "pause": 0.3, "backpressure": 0.3}  # 64/256 of cycles stalled on every link


@dataclass
class PartitionFigures:
    """What the cosimulation measured of one partition, in clock cycles (the fields' comments say which)."""

    name: str
    core_latency: int          # compute cycles of the generated core, start to done (from the generator)
    stages: int
    cost: float                # da4ml's cost estimate (about LUTs)
    latency: Optional[float]   # cycles from the last input beat accepted to the first output beat (first frame)
    frame_latency: Optional[float]  # first input beat to last output beat (first frame)
    ii: Optional[float]        # cycles between successive output frames, saturated input, no stalls (median)
    reference: str             # reference vs hls4ml emulation, one line


@dataclass
class LinkFigures:
    """One link's FIFO in the cosimulation: beats per frame, the depth simulated, the high-water mark per
    phase and the depth recommended from it."""

    index: int
    src: str
    dst: str
    beats: int
    sim_depth: int
    high_water: Dict[str, int]
    recommended_depth: int
    saturated: bool            # high water reached the simulated depth: the recommendation is a lower bound


@dataclass
class CosimResult:
    """Everything one `cosimulate` run found: verdict (`ok`: outputs match, no protocol violation, every
    partition's reference agrees with its emulation), per-partition and per-link figures, build and run times."""

    plan_hash: str
    sim: str
    frames: int
    ok: bool
    outputs_match: bool
    violations: List[str]
    partitions: Dict[str, PartitionFigures]
    links: List[LinkFigures]
    chain_latency: Optional[float]
    chain_ii: Optional[float]
    sim_cycles: int
    wall_seconds: float        # the simulator's whole run (start-up included)
    tb_seconds: float          # the testbench's phases only: what cycles_per_second divides by
    build_seconds: float
    agreements: List[str]
    notes: List[str] = field(default_factory=list)
    waves: List[str] = field(default_factory=list)

    @property
    def cycles_per_second(self) -> float:
        """Simulated clock cycles per wall-clock second of the testbench (of the whole run without it)."""
        t = self.tb_seconds or self.wall_seconds
        return self.sim_cycles / t if t else 0.0

    def to_dict(self) -> dict:
        """JSON-ready dict of the result (with cycles_per_second)."""
        d = asdict(self)
        d["cycles_per_second"] = round(self.cycles_per_second, 1)
        return d

    def summary(self) -> str:
        """The result as printable lines: agreements, per-partition latency, II and cost, per-link depths."""
        lines = [f"cosim {self.sim}: plan {self.plan_hash}, {self.frames} frames x 2 phases, "
                 f"{self.sim_cycles} cycles in {self.wall_seconds:.1f} s ({self.cycles_per_second:.0f} cycles/s)"]
        lines += [f"  {a}" for a in self.agreements]
        lines.append(f"  {'partition':10s} {'core':>5s} {'latency':>8s} {'frame lat':>9s} {'II':>6s} {'cost':>8s}")
        for p in self.partitions.values():
            f = lambda v: "-" if v is None else f"{v:.0f}"
            lines.append(f"  {p.name:10s} {p.core_latency:5d} {f(p.latency):>8s} {f(p.frame_latency):>9s} {f(p.ii):>6s} {p.cost:8.0f}")
        lines.append(f"  chain: latency {self.chain_latency} cycles (first beat in to last beat out), II {self.chain_ii} cycles")
        lines.append(f"  {'link':18s} {'beats':>5s} {'hw meas':>7s} {'hw stress':>9s} {'depth':>5s}")
        for l in self.links:
            lines.append(f"  {l.index}: {l.src + '->' + l.dst:15s} {l.beats:5d} {l.high_water.get('measure', 0):7d} "
                         f"{l.high_water.get('stress', 0):9d} {l.recommended_depth:5d}{' (saturated: >=)' if l.saturated else ''}")
        lines.append("  outputs == plan's hls4ml emulation, bit for bit" if self.outputs_match else
                     "  OUTPUTS DIFFER from the plan's hls4ml emulation")
        if self.violations:
            lines.append(f"  {len(self.violations)} protocol/data violations, first ones:")
            lines += [f"    {v}" for v in self.violations[:8]]
        else:
            lines.append("  protocol: every beat of every interface checked, no violation")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def default_frames(plan: Plan, n: int, seed: int = 0) -> np.ndarray:
    """Random frames over the input type's range: negative values, large values, every bit toggles."""
    from splitting.contract import FixedType

    dtype = plan.input_links[0].dtype
    shape = tuple(plan.model["input_shape"])
    rng = np.random.default_rng(seed)
    if dtype == "float32":
        return rng.uniform(-1, 1, (n,) + shape).astype(np.float32)
    t = FixedType.parse(dtype)
    lo, hi = t.raw_min * t.step, t.raw_max * t.step
    return rng.uniform(lo / 4, hi / 4, (n,) + shape)


def _beats(c_shape, dtype, values, data_width) -> List[List[int]]:
    c = Contract(src="", dst="", shape=tuple(c_shape), dtype=dtype, data_width=data_width)
    return [[d, k, int(l)] for d, k, l in c.beats(values)]


def _payload(c: Contract, values) -> str:
    p = c.packing
    valid = (p.beats - 1) * p.bytes_per_beat + bin(p.last_tkeep).count("1")
    return c.encode(values)[:valid].hex()


def _median(v):
    return float(np.median(v)) if len(v) else None


def cosimulate(plan: Plan, sim_name: str = "verilator", frames: Optional[np.ndarray] = None, n_frames: int = 6,
               stress: Optional[dict] = None, waves: bool = False, mutant: int = 0, cache: Path = sim.CACHE,
               latency_cutoff: float = 8.0, write_depths: bool = False, log: Callable = print,
               cores: Optional[Dict[str, rtlgen.CoreRTL]] = None, checks: bool = True) -> CosimResult:
    """Cosimulate `plan` in RTL and check it against the plan's hls4ml emulation, beat by beat.

    Steps: (1) the chained hls4ml emulation of the frames gives every interface's expected beats; (2) per
    partition, the bit-exact reference (harness.cosim.bitexact) is compared with the emulation and da4ml
    RTL is generated (unless `cores` is given); (3) the chain top (netlist) is built with `sim_name`
    ('verilator' or 'icarus'), cached by content under `cache`; (4) the cocotb testbench runs a measure phase
    (no stalls) and a stress phase (`stress`: {'stall': n/256 cycles stalled per link, 'pause': source pause
    probability, 'backpressure': sink backpressure probability}, default STRESS).

    frames: input frames (n,) + the model's input shape (default: `n_frames` from default_frames);
    waves: dump waveforms; mutant: a deliberate RTL fault (0 none; the tests' way to see the checks fail);
    latency_cutoff: da4ml's latency cutoff for pipelining; write_depths: write the recommended FIFO depths into
    the plan; checks: AXI-stream protocol monitors on. Returns a CosimResult (figures in clock cycles).
    Raises UserError on a plan whose precisions disagree at a link, SimulatorMissing without the simulator."""
    from splitting import hls
    from splitting.chain import emulation_runner, run_chain

    stress = dict(STRESS, **(stress or {}))
    x = np.asarray(frames) if frames is not None else default_frames(plan, n_frames)
    n = len(x)
    # 1. the plan's emulation: what every interface must carry
    log(f"[1/4] hls4ml emulation of {len(plan.partitions)} partitions on {n} frames")
    keep: Dict[str, np.ndarray] = {}
    final = run_chain(plan, x, emulation_runner(plan), keep=keep)
    values = dict(keep)
    values[HOST] = x
    # 2. reference vs emulation, and RTL, per partition
    log("[2/4] bit-exact reference and da4ml RTL per partition")
    agreements: List[Agreement] = []
    if cores is None:
        cores = {}
        for part in plan.ordered_partitions():
            ops = partition_ops(plan, part.name)
            links = plan.inputs_of(part.name)
            inp = assemble(links, [c.take(values[c.src]) for c in links])
            agreements.append(compare_with_emulation(part.name, Reference(ops), hls.emulation(plan, part.name), inp))
            log(f"  {agreements[-1].line()}")
            for c in links:
                if c.dtype != str(ops[0].out) and c.dtype.replace(" ", "") != str(ops[0].out):
                    raise UserError(f"link {c.src}->{c.dst} carries {c.dtype} but {part.name}'s hls4ml input type is "
                                    f"{ops[0].out}: the plan's precisions disagree; split again")
            cores[part.name] = rtlgen.generate(part.name, ops, Path(cache), plan.links[0].data_width, latency_cutoff, log=log)
    # 3. the chain top, built once per content
    log(f"[3/4] chain top ({len(plan.links)} links) and {sim_name} build")
    # link FIFO depths: the plan's tuning (tuning.json of an earlier cosimulation), else the links' own or defaults
    net = netlist.build(plan, cores, depths=record.read_tuning(plan).fifo_depths)
    top_hash = hashlib.sha256(net.verilog.encode()).hexdigest()[:16]
    top_file = Path(cache).resolve() / "tops" / f"chain_top-{top_hash}.v"
    top_file.parent.mkdir(parents=True, exist_ok=True)
    if not top_file.is_file():
        top_file.write_text(net.verilog)
    sources = sources_of(cores) + [str(top_file)]
    t_build = time.time()
    build_dir = sim.build(sim_name, sources, "chain_top", {"MUTANT": mutant}, waves=waves, cache=Path(cache), log=log)
    build_seconds = time.time() - t_build
    # 4. run
    dw = plan.links[0].data_width
    ifaces = []
    for it in net.interfaces:
        kind, ref = it.what
        if kind == "link":
            c = plan.links[ref]
            vals = [c.take(v) for v in values[c.src]]
            exp = [[[d, k, int(l)] for d, k, l in c.beats(v)] for v in vals]
            payloads = [_payload(c, v) for v in vals] if it.role == "source" else []
        else:
            part = plan.partition(ref)
            if kind == "in":
                links = plan.inputs_of(ref)
                vals = assemble(links, [c.take(values[c.src]) for c in links])
                shape = part.input_shape
            else:
                vals, shape = values[ref], part.output_shape
            exp = [_beats(shape, it.dtype, v, dw) for v in vals]
            payloads = []
        ifaces.append({"name": it.name, "prefix": f"{it.name}_axis", "role": it.role, "check": checks,
                       "signals": {s: f"{it.name}_axis_{s}" for s in netlist.SIGNALS}, "expected": exp,
                       "payloads": payloads})
    beats_total = sum(len(f[0]) for f in (i["expected"] for i in ifaces) if f)
    latency_total = sum(c.latency for c in cores.values())
    budget = int(20 * n * beats_total + 50 * latency_total + 5000)
    config = {"clock": "aclk", "reset": "aresetn", "reset_active_low": True, "stall": "stall",
              "framing_errors": "framing_errors", "fifos": {str(k): v for k, v in net.fifos.items()},
              "frames": n, "seed": 1, "interfaces": ifaces, "axis_monitors": checks,
              "phases": [{"name": "measure", "stall": 0, "pause": 0.0, "backpressure": 0.0, "budget_cycles": budget},
                         dict(name="stress", budget_cycles=budget, **stress)]}
    log(f"[4/4] simulating: {n} frames, measure phase then stress phase "
        f"(stall {stress['stall']}/256 per link, source pause {stress['pause']}, sink backpressure {stress['backpressure']})")
    report = sim.run(sim_name, build_dir, "chain_top", config, waves=waves)
    return _result(plan, sim_name, n, net, cores, report, final, agreements, build_seconds, write_depths, log)


def single_partition_plan(plan: Plan, name: str) -> Plan:
    """A plan of one partition of `plan`, fed and drained by the host (same folder, same contracts' types)."""
    from splitting.plan import Stage

    p = plan.partition(name)
    dw = plan.links[0].data_width
    links = [Contract(HOST, name, tuple(p.input_shape), p.input_precision, data_width=dw),
             Contract(name, HOST, tuple(p.output_shape), p.output_precision, data_width=dw)]
    sub = Plan(model=dict(plan.model, input_shape=list(p.input_shape), output_shape=list(p.output_shape)),
               stages=[Stage(0, p.kind, [name])], partitions={name: p}, links=links, board=plan.board,
               hls_defaults=plan.hls_defaults, notes=[], root=plan.root)
    sub.check()
    return sub


def sources_of(cores: Dict[str, rtlgen.CoreRTL]) -> List[str]:
    """Shell files, da4ml's static modules once (identical across partitions), every partition's files."""
    seen: Dict[str, str] = {}
    for core in cores.values():
        for f in rtlgen.da4ml_static_sources(core):
            seen.setdefault(Path(f).name, f)
    out = rtlgen.shell_sources() + sorted(seen.values())
    for core in cores.values():
        out += core.sources
    return out


def _result(plan, sim_name, n, net, cores, report, final, agreements, build_seconds, write_depths, log) -> CosimResult:
    violations = list(report["violations"])
    # outputs at the host, decoded, against the emulation
    outputs_match = True
    out_links = [(k, c) for k, c in enumerate(plan.links) if c.dst == HOST]
    for phase, ph in report["phases"].items():
        got_parts = []
        for k, c in out_links:
            frames = ph["received"].get(f"l{k}_c", [])
            if len(frames) != n:
                outputs_match = False
                break
            dec = []
            for hx in frames:
                raw = bytes.fromhex(hx)
                raw = raw + bytes(c.payload_bytes - len(raw))
                dec.append(c.decode(raw[:c.payload_bytes]))
            got_parts.append(np.stack(dec))
        if not outputs_match or len(got_parts) != len(out_links):
            outputs_match = False
            continue
        got = assemble([c for _, c in out_links], got_parts) if len(got_parts) > 1 else got_parts[0]
        want = np.asarray(final).reshape(got.shape)
        if not np.array_equal(got, want):
            bad = int(np.count_nonzero(got != want))
            violations.append(f"{phase}: {bad} output values differ from the plan's emulation")
            outputs_match = False
    times = report["phases"].get("measure", {}).get("times", {})
    parts = {}
    for p in plan.ordered_partitions():
        nm = rtlgen.safe(p.name)
        tin, tout = times.get(f"p_{nm}_in", []), times.get(f"p_{nm}_out", [])
        m = min(len(tin), len(tout))
        lat = [tout[i][0] - tin[i][1] for i in range(m)]
        flat = [tout[i][1] - tin[i][0] + 1 for i in range(m)]
        ii = list(np.diff([t[0] for t in tout])) if len(tout) > 1 else []
        core = cores[p.name]
        agr = next((a.line() for a in agreements if a.partition == p.name), "reference not compared (cores given)")
        # latency from the first frame (nothing queued ahead of it); II from the steady stream that follows
        parts[p.name] = PartitionFigures(p.name, core.latency, core.stages, core.cost, lat[0] if lat else None,
                                         flat[0] if flat else None, _median(ii), agr)
    hin = [times.get(f"l{k}_p", []) for k, c in enumerate(plan.links) if c.src == HOST]
    hout = [times.get(f"l{k}_c", []) for k, c in enumerate(plan.links) if c.dst == HOST]
    chain_lat = chain_ii = None
    if hin and hout and all(len(t) == n for t in hin + hout):
        first_in = [min(t[i][0] for t in hin) for i in range(n)]
        last_out = [max(t[i][1] for t in hout) for i in range(n)]
        chain_lat = float(last_out[0] - first_in[0] + 1)
        chain_ii = _median(list(np.diff(last_out))) if n > 1 else None
    links = []
    for k, c in enumerate(plan.links):
        hw = {ph: int(v["fifo_high_water"].get(str(k), 0)) for ph, v in report["phases"].items()}
        peak = max(hw.values()) if hw else 0
        depth = net.fifo_depths[k]
        rec = int(max(2, 2 ** int(np.ceil(np.log2(max(peak, 1))))))
        links.append(LinkFigures(k, c.src, c.dst, c.packing.beats, depth, hw, rec, peak >= depth))
    ok = not violations and outputs_match
    notes = []
    if write_depths:
        if ok and plan.root is not None:
            note = (f"link fifo_depth = high-water mark of the link FIFO, rounded up to a power of two, over "
                    f"{n} frames with no stalls and with random stalls ({STRESS['stall']}/256 per link, source pause "
                    f"{STRESS['pause']}, sink backpressure {STRESS['backpressure']})")
            before = record.read_tuning(plan).fifo_depths
            depths = {l.index: l.recommended_depth for l in links}
            path = record.write_fifo_depths(plan, depths, note)
            # the plan itself is not rewritten: its hash (and so its deployments and its history series) stays
            what = "unchanged" if before == depths else ("new" if not before else "changed")
            notes.append(f"FIFO depths written into {path} ({what}; plan hash {plan.hash} unchanged: the depths tune "
                         "the plan for the RTL target, boards are not re-flashed, the history marks new depths as an "
                         "event of the series)")
        elif not ok:
            notes.append("FIFO depths not written: the cosimulation failed")
    return CosimResult(plan.hash, sim_name, n, ok, outputs_match, violations, parts, links, chain_lat, chain_ii,
                       int(report.get("sim_cycles", 0)), float(report.get("wall_seconds", 0.0)),
                       float(report.get("tb_seconds", 0.0)), build_seconds,
                       [a.line() for a in agreements], notes, report.get("waves", []))
