"""The whole plan as one RTL top: partitions, and between them the links of the plan.

Every link (a Contract) becomes throttle -> FIFO -> throttle: the FIFO is the link's buffer (its depth is what
we size), the throttles insert random stalls on both sides (run-time rate `stall`, 0 = none). Where a
producer feeds several links (input split: each link carries a `select` slice) a fork deserialises the
producer's frame and serialises each slice per its link's contract; where a consumer has several incoming
links (neuron split parts, input-split partial sums) a combine step deserialises each and serialises their
concatenation (contract.assemble's order; a consumer of several tensors takes their flat concatenation, and
a link that skips stages is one more FIFO from its producer's fork) per the consumer's input packing. Host links are top-level ports.

Every AXI-stream interface in the top has a name (`<name>_axis_t*` wires) and an entry in `interfaces`, with
its packing and the tensor it carries, so the testbench can check every beat of every interface.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from splitting.contract import Contract, Packing, assemble
from splitting.plan import HOST, Plan

from .rtlgen import CoreRTL, safe

SIGNALS = ("tdata", "tkeep", "tvalid", "tready", "tlast")


@dataclass
class Interface:
    """One AXI-stream interface of the top, and what must cross it."""

    name: str                 # wire prefix: <name>_axis_t*
    role: str                 # "source" (host drives), "sink" (host receives) or "monitor" (internal)
    packing: Dict
    what: Tuple               # ("link", index) | ("in", partition) | ("out", partition)
    dtype: str


@dataclass
class Netlist:
    """A plan as one Verilog top: the source text, its AXI-stream interfaces, the link FIFOs (link index
    -> instance name, depth) and the partitions it instantiates."""

    verilog: str
    top: str
    interfaces: List[Interface]
    fifos: Dict[int, str]     # link index -> FIFO instance name
    fifo_depths: Dict[int, int]
    partitions: List[str]
    notes: List[str] = field(default_factory=list)


def _decl(name: str, dw: int) -> str:
    return (f"    wire [{dw - 1}:0] {name}_axis_tdata;\n    wire [{dw // 8 - 1}:0] {name}_axis_tkeep;\n"
            f"    wire {name}_axis_tvalid, {name}_axis_tready, {name}_axis_tlast;\n")


def _bind(port: str, wire: str) -> str:
    return ", ".join(f".{port}_{s}({wire}_axis_{s})" for s in SIGNALS)


def _pk(p: Packing, prefix: str) -> str:
    return (f".{prefix}ELEM_BITS({p.element_bits}), .{prefix}PER_BEAT({p.elements_per_beat}), "
            f".{prefix}BEATS({p.beats})")


def default_depth(c: Contract) -> int:
    """Deep enough that the FIFO never pushes back in simulation (so its high-water mark is the need)."""
    beats = c.packing.beats
    return int(2 ** np.ceil(np.log2(max(16, 4 * beats))))


def _regroup_module(name: str, ins: List[Tuple[str, Packing, int]], outs: List[Tuple[str, Packing, int]],
                    mapping: List[List[Tuple[int, int]]]) -> str:
    """A module with deserialisers for `ins` and serialisers for `outs`; out element j of output o comes
    from mapping[o][j] = (input index, element index). All inputs must arrive before outputs are sent; each
    output takes the gathered frame independently, and the inputs are released when every output took it."""
    dw = ins[0][1].data_width
    ports, body = [], []
    for k, (pn, p, n) in enumerate(ins):
        ports += [f"input wire [{dw - 1}:0] {pn}_tdata", f"input wire [{dw // 8 - 1}:0] {pn}_tkeep",
                  f"input wire {pn}_tvalid", f"output wire {pn}_tready", f"input wire {pn}_tlast"]
        body.append(f"""    wire [{n * p.element_bits - 1}:0] in{k}_frame;
    wire in{k}_valid;
    axis_deser #(.DATA_WIDTH({dw}), .ELEM_BITS({p.element_bits}), .PER_BEAT({p.elements_per_beat}),
                 .BEATS({p.beats}), .ELEMS({n})) u_in{k} (
        .aclk(aclk), .aresetn(aresetn), .s_axis_tdata({pn}_tdata), .s_axis_tkeep({pn}_tkeep),
        .s_axis_tvalid({pn}_tvalid), .s_axis_tready({pn}_tready), .s_axis_tlast({pn}_tlast),
        .frame(in{k}_frame), .frame_valid(in{k}_valid), .frame_take(take_all), .framing_error(ferr[{k}]));""")
    all_valid = " && ".join(f"in{k}_valid" for k in range(len(ins)))
    for o, (pn, p, n) in enumerate(outs):
        ports += [f"output wire [{dw - 1}:0] {pn}_tdata", f"output wire [{dw // 8 - 1}:0] {pn}_tkeep",
                  f"output wire {pn}_tvalid", f"input wire {pn}_tready", f"output wire {pn}_tlast"]
        assigns = []
        for j, (k, e) in enumerate(mapping[o]):
            eb = ins[k][1].element_bits
            if eb != p.element_bits:
                raise ValueError(f"{name}: element containers differ ({eb} vs {p.element_bits} bits)")
            assigns.append(f"    assign out{o}_frame[{(j + 1) * eb - 1}:{j * eb}] = in{k}_frame[{(e + 1) * eb - 1}:{e * eb}];")
        body.append(f"""    wire [{n * p.element_bits - 1}:0] out{o}_frame;
{chr(10).join(assigns)}
    wire out{o}_take;
    reg out{o}_done;
    axis_ser #(.DATA_WIDTH({dw}), .ELEM_BITS({p.element_bits}), .PER_BEAT({p.elements_per_beat}),
               .BEATS({p.beats}), .ELEMS({n}), .LAST_KEEP({p.last_tkeep})) u_out{o} (
        .aclk(aclk), .aresetn(aresetn), .frame(out{o}_frame), .frame_valid(gathered && !out{o}_done),
        .frame_take(out{o}_take), .m_axis_tdata({pn}_tdata), .m_axis_tkeep({pn}_tkeep),
        .m_axis_tvalid({pn}_tvalid), .m_axis_tready({pn}_tready), .m_axis_tlast({pn}_tlast));""")
    n_out = len(outs)
    taken = " && ".join(f"(out{o}_done || out{o}_take)" for o in range(n_out))
    resets = "\n".join(f"            out{o}_done <= 1'b0;" for o in range(n_out))
    updates = "\n".join(f"            out{o}_done <= take_all ? 1'b0 : (out{o}_done || out{o}_take);" for o in range(n_out))
    return f"""// Generated by splitrack (harness/cosim/netlist.py): {name}
`timescale 1ns/1ps
module {name} (
    input wire aclk,
    input wire aresetn,
    {(","+chr(10)+"    ").join(ports)},
    output wire framing_error
);
    wire [{len(ins) - 1}:0] ferr;
    assign framing_error = |ferr;
    wire gathered = {all_valid};
    wire take_all = gathered && {taken};
{chr(10).join(body)}
    always @(posedge aclk) begin
        if (!aresetn) begin
{resets}
        end else begin
{updates}
        end
    end
endmodule
"""


def build(plan: Plan, cores: Dict[str, CoreRTL], depths: Optional[Dict[int, int]] = None) -> Netlist:
    """The chain top of a plan (module `chain_top`), given each partition's generated RTL."""
    links = list(plan.links)
    dw = links[0].data_width
    if any(c.data_width != dw for c in links):
        raise ValueError("links of one plan must share one AXI data width")
    depths = dict(depths or {})
    for k, c in enumerate(links):
        depths.setdefault(k, int(c.fifo_depth) if c.fifo_depth else default_depth(c))
    ports = ["input wire aclk", "input wire aresetn", "input wire [7:0] stall"]
    wires, insts, extra_modules = [], [], []
    interfaces: List[Interface] = []
    ferr: List[str] = []

    def port_group(prefix: str, master: bool) -> List[str]:
        d_in, d_out = ("output", "input") if master else ("input", "output")
        return [f"{d_in} wire [{dw - 1}:0] {prefix}_axis_tdata", f"{d_in} wire [{dw // 8 - 1}:0] {prefix}_axis_tkeep",
                f"{d_in} wire {prefix}_axis_tvalid", f"{d_out} wire {prefix}_axis_tready", f"{d_in} wire {prefix}_axis_tlast"]

    # the two ends of every link
    for k, c in enumerate(links):
        pk = asdict(c.packing)
        prod, cons = f"l{k}_p", f"l{k}_c"
        if c.src == HOST:
            ports += port_group(prod, master=False)
            interfaces.append(Interface(prod, "source", pk, ("link", k), c.dtype))
        else:
            wires.append(_decl(prod, dw))
            interfaces.append(Interface(prod, "monitor", pk, ("link", k), c.dtype))
        if c.dst == HOST:
            ports += port_group(cons, master=True)
            interfaces.append(Interface(cons, "sink", pk, ("link", k), c.dtype))
        else:
            wires.append(_decl(cons, dw))
            interfaces.append(Interface(cons, "monitor", pk, ("link", k), c.dtype))
        wires.append(_decl(f"l{k}_f", dw) + _decl(f"l{k}_g", dw))
        insts.append(f"""    axis_throttle #(.DATA_WIDTH({dw}), .SEED(16'd{(2 * k + 1) * 7919 % 65521 or 1})) u_l{k}_tp (
        .aclk(aclk), .aresetn(aresetn), .stall(stall), {_bind('s_axis', prod)}, {_bind('m_axis', f'l{k}_f')});
    axis_fifo #(.DATA_WIDTH({dw}), .DEPTH({depths[k]})) u_fifo_{k} (
        .aclk(aclk), .aresetn(aresetn), {_bind('s_axis', f'l{k}_f')}, {_bind('m_axis', f'l{k}_g')}, .level(), .high_water());
    axis_throttle #(.DATA_WIDTH({dw}), .SEED(16'd{(2 * k + 2) * 7919 % 65521 or 1})) u_l{k}_tc (
        .aclk(aclk), .aresetn(aresetn), .stall(stall), {_bind('s_axis', f'l{k}_g')}, {_bind('m_axis', cons)});""")

    for part in plan.ordered_partitions():
        n = safe(part.name)
        core = cores[part.name]
        pin, pout = Packing(**core.in_packing), Packing(**core.out_packing)
        wires.append(_decl(f"p_{n}_in", dw) + _decl(f"p_{n}_out", dw) + f"    wire ferr_{n};\n")
        interfaces.append(Interface(f"p_{n}_in", "monitor", asdict(pin), ("in", part.name), core.in_type))
        interfaces.append(Interface(f"p_{n}_out", "monitor", asdict(pout), ("out", part.name), core.out_type))
        insts.append(f"    {core.module} #(.MUTANT(MUTANT)) u_{n} (.aclk(aclk), .aresetn(aresetn), "
                     f"{_bind('s_axis', f'p_{n}_in')}, {_bind('m_axis', f'p_{n}_out')}, .framing_error(ferr_{n}));")
        ferr.append(f"ferr_{n}")
        n_in = int(np.prod(part.input_shape))
        n_out = int(np.prod(part.output_shape))
        # consumer side: combine the incoming links
        inc = [(k, c) for k, c in enumerate(links) if c.dst == part.name]
        inc.sort(key=lambda kc: kc[1].index)
        if len(inc) == 1 and inc[0][1].elements == n_in:
            k = inc[0][0]
            insts.append(_alias(f"p_{n}_in", f"l{k}_c"))
        else:
            ids = []
            off = 0
            for k, c in inc:
                ids.append(np.arange(c.elements).reshape(c.shape) + off)
                off += c.elements
            # the consumer's input as contract.assemble builds it (several inputs: their flat concatenation)
            order = assemble([c for _, c in inc], ids).reshape(-1)
            starts = np.cumsum([0] + [c.elements for _, c in inc])
            mapping = [[(int(np.searchsorted(starts, g, side="right") - 1), int(g - starts[np.searchsorted(starts, g, side="right") - 1]))
                        for g in order]]
            mod = f"combine_{n}"
            extra_modules.append(_regroup_module(mod, [(f"i{j}", c.packing, c.elements) for j, (k, c) in enumerate(inc)],
                                                 [("o0", pin, n_in)], mapping))
            binds = [", ".join(f".i{j}_{s}(l{k}_c_axis_{s})" for s in SIGNALS) for j, (k, c) in enumerate(inc)]
            wires.append(f"    wire ferr_{mod};\n")
            ferr.append(f"ferr_{mod}")
            insts.append(f"    {mod} u_{mod} (.aclk(aclk), .aresetn(aresetn), {', '.join(binds)}, "
                         f"{', '.join(f'.o0_{s}(p_{n}_in_axis_{s})' for s in SIGNALS)}, .framing_error(ferr_{mod}));")
        # producer side: fork into the outgoing links
        outg = [(k, c) for k, c in enumerate(links) if c.src == part.name]
        if len(outg) == 1 and outg[0][1].select is None and outg[0][1].elements == n_out:
            insts.append(_alias(f"l{outg[0][0]}_p", f"p_{n}_out"))
        else:
            ids = np.arange(n_out).reshape(part.output_shape)
            mapping = [[(0, int(e)) for e in c.take(ids).reshape(-1)] for _, c in outg]
            mod = f"fork_{n}"
            extra_modules.append(_regroup_module(mod, [("i0", pout, n_out)],
                                                 [(f"o{j}", c.packing, c.elements) for j, (k, c) in enumerate(outg)], mapping))
            binds = [", ".join(f".o{j}_{s}(l{k}_p_axis_{s})" for s in SIGNALS) for j, (k, c) in enumerate(outg)]
            wires.append(f"    wire ferr_{mod};\n")
            ferr.append(f"ferr_{mod}")
            insts.append(f"    {mod} u_{mod} (.aclk(aclk), .aresetn(aresetn), "
                         f"{', '.join(f'.i0_{s}(p_{n}_out_axis_{s})' for s in SIGNALS)}, {', '.join(binds)}, "
                         f".framing_error(ferr_{mod}));")
    ports.append(f"output wire [{len(ferr) - 1}:0] framing_errors")
    top = f"""// Generated by splitrack (harness/cosim/netlist.py): plan {plan.model.get('name', '')} ({plan.hash}) as one RTL top.
`timescale 1ns/1ps
module chain_top #(
    parameter MUTANT = 0
) (
    {(","+chr(10)+"    ").join(ports)}
);
{"".join(wires)}
    assign framing_errors = {{{", ".join(reversed(ferr))}}};
{chr(10).join(insts)}
endmodule
"""
    return Netlist(verilog=top + "\n" + "\n".join(extra_modules), top="chain_top", interfaces=interfaces,
                   fifos={k: f"u_fifo_{k}" for k in range(len(links))}, fifo_depths=depths,
                   partitions=[p.name for p in plan.ordered_partitions()])


def _alias(dst: str, src: str) -> str:
    """Connect interface dst (driven downstream side) to src: data forward, ready backward."""
    fwd = "\n".join(f"    assign {dst}_axis_{s} = {src}_axis_{s};" for s in ("tdata", "tkeep", "tvalid", "tlast"))
    return fwd + f"\n    assign {src}_axis_tready = {dst}_axis_tready;"
