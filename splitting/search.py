"""Search for a partition plan: cut points, neuron/input splits, per-partition precision and reuse factor.

The model's layers are taken in a topological order of its graph (a chain is one); a *boundary* is a place
between two layers of that order where `split.split_model` can cut (not between a linear layer and the
activation layer that follows it). Any number of tensors may cross a boundary: each is its own link, from the
stage that produced it to every stage that reads it (a skip link when stages lie between), and a stage's
incoming hop moves the bytes of every tensor it reads. A plan is a path of *stage options*
from boundary 0 to the end:

  layers  one partition running layers i..j-1 (i, j boundaries), on one board
  neuron  a Dense/Conv2D layer (with the activation layers right after it) split by output units/filters into
          k parts, k boards in parallel (only when its activations are element-wise: a softmax would have to
          move behind the join, which split_model does with an extra stage we do not model)
  input   the same layer split by inputs/input channels into k partial sums (k boards), then a join stage (one
          board) that sums them and applies the activations

Splits are considered only for layers that do not fit one board alone under any configuration (the issue's
rule), with k = 2..max_parts. Every partition of an option takes its own configuration (precision,
model-level reuse factor, strategy) among the candidates, each layer its own reuse factor from it
(`reuse.layer_reuse`: the largest that keeps pace with the partition's slowest layer). A configuration is
usable when the chosen end of every resource's range (`fit`, default the upper bound) is under the cap and
the estimate is not one `estimators.implausible` flags (`_usable`).
The join of an input split is a Dense/1x1 Conv whose kernel is k stacked identity matrices: under the
Latency strategy hls4ml's constant weights let HLS fold the products by 0 and 1 away, so it is planned with
Latency, reuse 1, and estimated as the k-operand sum (an Add, to rule4ml) plus the activations.

Costs of a plan, as the issue defines them:
  boards          number of partitions
  latency_us      sum over stages of (slowest partition's cycles / board clock) plus, per hop (host -> first
                  stage, stage -> stage, last stage -> host), the software overhead plus the busiest end's
                  bytes on the link: a stage of k neuron parts receives k copies of its input, a join receives
                  k partial sums (bytes from the boundary contracts' AXI-stream packing)
  interval_cycles the slowest stage's initiation interval

Exact search: a label-setting dynamic programme over boundaries keeps, at each boundary, every
non-dominated (boards, latency, interval) triple reachable. Each objective's optimum and the Pareto front
are read off the labels at the end, so they are exact for the estimates. Should a boundary hold more than
`max_labels` labels (not seen on our models), the worst by a normalised sum are dropped and the result says
`exact: false`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import product
from typing import Dict, List, Optional, Sequence, Tuple

from .catalog import DEFAULT_CAP, Device
from .contract import FixedType, Packing
from .errors import UserError
from .estimates import BOUNDS, Estimate, Estimator
from .estimators import implausible
from .layerspec import HlsConfig, LayerSpec, input_part, join_layers, neuron_part

OBJECTIVES = ("boards", "latency", "interval")
ELEMENTWISE = ("linear", "relu", "sigmoid", "tanh", "hard_sigmoid", "elu", "selu", "softplus", "softsign",
               "leaky_relu", "relu6", "swish", "silu", "gelu", "exponential", "hard_silu", "hard_swish")
SPLITTABLE = ("Dense", "Conv1D", "Conv2D")


_ONE_CYCLE = Estimate(0, 0, 0, 0, 1, 1, "floor")


class NoFitError(UserError):
    """No plan fits: the message names the layer and the smallest utilisation reachable."""


@dataclass
class SearchOptions:
    """What the planner may choose from and what it optimises: the board and the fraction `cap` of its
    resources a partition may use, which end of each estimate's range must fit under it (`fit`: 'high', the
    upper bound, by default; 'point'; 'low'), the objective ('boards', 'latency' or 'interval'), the hls4ml
    precisions, model-level reuse factors (each layer's own follows: `reuse.layer_reuse`) and strategies to
    try, the io_stream FIFO depths assumed (`fifo_depth`, splitting.fifo_depths: 'optimized' as hls4ml's FIFO
    depth optimisation leaves them, which the written plan then carries; 'default' hls4ml's own), and the most
    partitions a plan may have."""

    board: Device
    cap: float = DEFAULT_CAP
    objective: str = "boards"
    precisions: Tuple[str, ...] = ("ap_fixed<16,6>",)
    reuse_factors: Tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
    strategies: Tuple[str, ...] = ("Latency", "Resource")
    fit: str = "high"
    plausible_only: bool = True  # never propose a candidate `estimators.implausible` flags
    max_parts: int = 16
    boards_available: Optional[int] = None
    boards_exact: Optional[int] = None  # exactly this many boards (`plan --n-boards N`)
    hop_overhead_us: float = 100.0
    link_gbps: Optional[float] = None  # default: the board's link
    data_width: int = 32
    max_labels: int = 20000
    monotone: bool = True  # raise a run's figures to those of the runs it contains; at least 1 cycle
    fifo_depth: str = "optimized"  # io_stream FIFO depths assumed (and written: splitting.fifo_depths)

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise UserError(f"objective {self.objective!r}: choose one of {', '.join(OBJECTIVES)}")
        if self.fit not in BOUNDS:
            raise UserError(f"--fit {self.fit!r}: choose one of {', '.join(BOUNDS)}")
        if not 0 < self.cap <= 1.0:
            raise UserError(f"--max-util {self.cap}: give a fraction in (0, 1], e.g. 0.8")
        if self.max_parts < 2:
            raise UserError("--max-parts must be at least 2")
        if self.boards_available is not None and self.boards_available < 1:
            raise UserError("--boards-available must be at least 1")
        if self.boards_exact is not None and self.boards_exact < 1:
            raise UserError("--n-boards must be at least 1")
        if self.boards_exact is not None and self.boards_available is not None:
            raise UserError("give --n-boards N (exactly N) or --boards-available N (at most N), not both")

    @property
    def configs(self) -> List[HlsConfig]:
        """Every (precision, reuse factor, strategy) HlsConfig the search tries."""
        return [HlsConfig(p, r, s, fifo_depth=self.fifo_depth)
                for p, s, r in product(self.precisions, self.strategies, self.reuse_factors)]

    @property
    def gbps(self) -> float:
        """Link speed in Gb/s used for hop times: the option's, else the board's."""
        return self.link_gbps or self.board.link_gbps


@dataclass
class PartChoice:
    """One partition of a planned stage."""

    kind: str  # layers, neuron, input, join
    layers: List[str]
    specs: Tuple[LayerSpec, ...]
    config: HlsConfig
    estimate: Estimate
    split: Optional[Dict] = None


@dataclass
class StageChoice:
    """One stage of a candidate plan: how it is formed ('cut', 'neuron' or 'input' split), its parts,
    and the bytes and microseconds of its incoming hop."""

    kind: str
    parts: List[PartChoice]
    hop_in_bytes: int  # bytes the busiest end of the incoming hop moves per frame
    hop_in_us: float

    @property
    def cycles(self) -> float:
        """Latency of the stage in clock cycles: its slowest part's."""
        return max(p.estimate.cycles for p in self.parts)

    @property
    def interval(self) -> float:
        """Initiation interval of the stage in clock cycles: its slowest part's."""
        return max(p.estimate.interval for p in self.parts)


@dataclass
class PlanChoice:
    """A planned partitioning with its estimated costs."""

    stages: List[StageChoice]
    boards: int
    latency_us: float
    interval_cycles: float
    out_hop_us: float
    exact: bool = True
    cut_after: List[str] = field(default_factory=list)
    neurons: Dict[str, int] = field(default_factory=dict)
    inputs: Dict[str, int] = field(default_factory=dict)

    @property
    def partitions(self) -> List[PartChoice]:
        """Every part of every stage, in flow order."""
        return [p for s in self.stages for p in s.parts]

    def describe(self) -> str:
        """The plan in words: where it cuts and which layers it splits by neurons or inputs."""
        bits = []
        if self.cut_after:
            bits.append("cut after " + ", ".join(self.cut_after))
        bits += [f"{n} neuron-split x{k}" for n, k in self.neurons.items()]
        bits += [f"{n} input-split x{k}" for n, k in self.inputs.items()]
        return "; ".join(bits) or "one board, no cut"

    def configs(self) -> str:
        """Per stage: reuse factor and strategy (and precision when several are in play)."""
        precisions = {p.config.precision for p in self.partitions}
        out = []
        for st in self.stages:
            c = st.parts[0].config
            prec = f" {c.precision}" if len(precisions) > 1 else ""
            out.append(f"R{c.reuse_factor} {c.strategy[:3]}{prec}")
        return " | ".join(out)


@dataclass
class _Option:
    """A transition between boundaries: one stage, or for an input split two (parts, then join)."""

    start: int
    end: int
    stages: List[StageChoice]
    cut_after: Optional[str]  # the layer a `layers` stage ends with (a cut, unless it ends the model)
    split: Optional[Tuple[str, str, int]] = None  # (layer, "neuron"|"input", k)

    @property
    def boards(self) -> int:
        return sum(len(s.parts) for s in self.stages)

    def latency(self, clock_mhz: float) -> float:
        return sum(s.cycles / clock_mhz + s.hop_in_us for s in self.stages)

    @property
    def interval(self) -> float:
        return max(s.interval for s in self.stages)


@dataclass
class SearchResult:
    """The planner's answer: the best plan for the objective, the Pareto front (boards, latency,
    interval) when asked for, how many (partition, configuration) pairs were estimated, and counters."""

    best: PlanChoice
    pareto: List[PlanChoice]
    candidates: int  # (partition, configuration) pairs estimated
    stats: Dict[str, int]


# ---------------------------------------------------------------------------------------------------------
def boundaries(specs: Sequence[LayerSpec]) -> List[int]:
    """Boundaries where split_model accepts a cut: not between a linear layer and its activation layer."""
    out = [0]
    for i in range(1, len(specs)):
        prev, nxt = specs[i - 1], specs[i]
        if nxt.kind == "Activation" and prev.kind != "Activation" and prev.activation == "linear":
            continue
        out.append(i)
    out.append(len(specs))
    return out


def group_end(specs: Sequence[LayerSpec], i: int) -> int:
    """The split layer at i and the activation layers right after it (they go into the parts/join)."""
    e = i + 1
    while e < len(specs) and specs[e].kind == "Activation":
        e += 1
    return e


def _bytes(elements: int, precision: str, data_width: int) -> int:
    p = Packing.for_elements(elements, precision, data_width)
    return p.beats * p.bytes_per_beat


def _split_sizes(n: int, k: int) -> List[int]:
    return [n // k + (1 if j < n % k else 0) for j in range(k)]


class Planner:
    """Enumerates candidate partitions, estimates them in batches, and runs the dynamic programme."""

    def __init__(self, specs: Sequence[LayerSpec], estimator: Estimator, options: SearchOptions, progress=None,
                 reads: Optional[Sequence[Sequence[Tuple[int, int]]]] = None, unsplittable: Sequence[int] = ()):
        if not specs:
            raise UserError("the model has no layers")
        self.specs = list(specs)
        # the graph: what each layer reads, (producer position or -1 for the model input, elements); a chain
        # when not given. Layers are in a topological order, so a plan's stages are runs of that order.
        self.reads = [list(r) for r in reads] if reads is not None else \
            [[(i - 1, math.prod(s.input_shape))] for i, s in enumerate(self.specs)]
        self.unsplittable = set(unsplittable)  # positions priced as a splittable kind that split_model cannot split
        self.est = estimator
        self.opt = options
        self.board = options.board
        self.progress = progress or (lambda msg: None)
        self.link_precision = options.precisions[0]  # split_model puts one type on every link
        self.bounds = boundaries(self.specs)
        self.n_estimates = 0

    # -- helpers ----------------------------------------------------------------------------------------
    def _elements_at(self, b: int) -> int:
        shape = self.specs[b].input_shape if b < len(self.specs) else self.specs[-1].output_shape
        return math.prod(shape)

    def _in_tensors(self, i: int, j: int) -> List[int]:
        """Elements of each tensor the run of layers i..j-1 reads from before i (each crosses on its own
        link, from whichever stage produced it: a skip link when that is not the stage just before)."""
        seen: Dict[int, int] = {}
        for r in self.reads[i:j]:
            for p, n in r:
                if p < i and p not in seen:
                    seen[p] = n
        return list(seen.values())

    def _clean(self, b: int) -> bool:
        """True when only the output of layer b-1 (the model input for b = 0) crosses boundary b."""
        if b == 0 or b == len(self.specs):
            return True
        return all(p == b - 1 or p >= b for r in self.reads[b:] for p, _ in r)

    def _hop_us(self, nbytes: int) -> float:
        return self.opt.hop_overhead_us + nbytes * 8 / (self.opt.gbps * 1e3)

    def _fits(self, e: Estimate) -> bool:
        return e.peak(self.board, self.opt.fit) <= self.opt.cap + 1e-12

    def _usable(self, specs: Sequence[LayerSpec], c: HlsConfig, e: Estimate) -> bool:
        """A candidate the planner may propose: the chosen end of its range fits under the cap, and its
        figures are not ones the plan would flag as implausible (estimators.implausible)."""
        return self._fits(e) and not (self.opt.plausible_only and implausible(specs, c, e, self.board.capacity("dsp")))

    def _estimate(self, requests) -> List[Estimate]:
        self.n_estimates += len(requests)
        out = self.est.estimate_many(requests)
        if self.opt.monotone:  # a clocked design takes at least one cycle per frame
            out = [e.at_least(_ONE_CYCLE, "raised to 1 cycle (the estimator predicted less)") for e in out]
        return out

    @staticmethod
    def _pareto_configs(pairs: List[Tuple[HlsConfig, Estimate]]) -> List[Tuple[HlsConfig, Estimate]]:
        """Configurations not beaten on both cycles and interval (first listed wins ties)."""
        keep: List[Tuple[HlsConfig, Estimate]] = []
        for c, e in sorted(pairs, key=lambda ce: (ce[1].cycles, ce[1].interval)):
            if not keep or e.interval < min(k[1].interval for k in keep):
                keep.append((c, e))
        return keep

    def _blocked_note(self, blocked: Dict[int, dict], seg_est) -> str:
        """What the blocked layers do not fit, said truly: as a partition of their own, at the least-loaded
        configuration tried (which resource, which end of the range), and whether a longer run holding them fits."""
        at = {"high": "upper bound", "low": "lower bound", "point": "estimate"}[self.opt.fit]
        says = []
        for i, b in blocked.items():
            c, est = b["single"]
            util = est.utilization(self.board, self.opt.fit)
            res = max(util, key=util.get)
            e = b["end"]
            inside = any(a <= i and j >= e and (a, j) != (i, e) and any(self._usable(self.specs[a:j], cc, ee) for cc, ee in pairs)
                         for (a, j), pairs in seg_est.items())
            says.append(f"{self.specs[i].name} does not fit one {self.board.name} as a partition of its own at any "
                        f"configuration tried (least loaded: {c.strategy} reuse {c.reuse_factor} {c.precision}, "
                        f"{res.upper()} {100 * util[res]:.0f} % at the {at}, cap {100 * self.opt.cap:.0f} %)"
                        + ("; a partition holding it with its neighbouring layers does fit, so splitting it is an option, not a need"
                           if inside else ""))
        return "; ".join(says)

    # -- enumeration --------------------------------------------------------------------------------------
    def options(self) -> Tuple[List[_Option], Dict[int, dict]]:
        """Every feasible (contiguous run of layers, configuration) option with its estimate, and why the
        infeasible runs are blocked (start layer -> reasons)."""
        cfgs = self.opt.configs
        bset = self.bounds
        segs = [(i, j) for a, i in enumerate(bset) for j in bset[a + 1 :]]
        self.progress(f"{len(self.specs)} layers, {len(bset) - 1} places to cut, {len(segs)} contiguous runs x {len(cfgs)} configurations")
        reqs = [(tuple(self.specs[i:j]), c) for (i, j) in segs for c in cfgs]
        ests = self._estimate(reqs)
        seg_est: Dict[Tuple[int, int], List[Tuple[HlsConfig, Estimate]]] = {}
        for n, (i, j) in enumerate(segs):
            seg_est[(i, j)] = list(zip(cfgs, ests[n * len(cfgs) : (n + 1) * len(cfgs)]))

        if self.opt.monotone and self.est.learned:
            self._monotone(seg_est)

        opts: List[_Option] = []
        for (i, j), pairs in seg_est.items():
            feas = self._pareto_configs([(c, e) for c, e in pairs if self._usable(self.specs[i:j], c, e)])
            hop = sum(_bytes(n, self.link_precision, self.opt.data_width) for n in self._in_tensors(i, j))
            for c, e in feas:
                part = PartChoice("layers", [s.name for s in self.specs[i:j]], tuple(self.specs[i:j]), c, e)
                st = StageChoice("layers", [part], hop, self._hop_us(hop))
                opts.append(_Option(i, j, [st], self.specs[j - 1].name))

        # splits, for layers whose group does not fit one board alone
        blocked: Dict[int, dict] = {}
        split_reqs, split_meta = [], []
        for i in bset[:-1]:
            layer = self.specs[i]
            e = group_end(self.specs, i)
            if e not in bset:
                continue
            if any(self._usable(self.specs[i:e], c, est) for c, est in seg_est[(i, e)]):
                continue
            single = min(seg_est[(i, e)], key=lambda ce: ce[1].peak(self.board, self.opt.fit))
            if not (self._clean(i) and self._clean(e)):  # split_model splits layers on the main path only
                blocked[i] = {"end": e, "single": single, "branch": True}
                continue
            blocked[i] = {"end": e, "single": single}
            if layer.kind not in SPLITTABLE or i in self.unsplittable:
                continue
            acts = [layer.activation] + [s.activation for s in self.specs[i + 1 : e]]
            trailing = list(self.specs[i + 1 : e])
            n_units = layer.units
            n_fan = layer.input_shape[-1]
            for k in range(2, self.opt.max_parts + 1):
                if all(a in ELEMENTWISE for a in acts) and k <= n_units:
                    specs_n = (neuron_part(layer, _split_sizes(n_units, k)[0]),) + tuple(trailing)
                    for c in cfgs:
                        split_reqs.append((specs_n, c))
                        split_meta.append(("neuron", i, e, k, c))
                if k <= n_fan:
                    first = input_part(layer, _split_sizes(n_fan, k)[0], bias=True)  # the largest part, with the bias
                    for c in cfgs:
                        split_reqs.append(((first,), c))
                        split_meta.append(("input", i, e, k, c))
                    join = tuple(join_layers(layer, k)) + tuple(s for s in trailing)
                    for p in self.opt.precisions:
                        jc = HlsConfig(p, 1, "Latency", fifo_depth=self.opt.fifo_depth)
                        split_reqs.append((join, jc))
                        split_meta.append(("join", i, e, k, jc))
        if split_reqs:
            self.progress(f"{self._blocked_note(blocked, seg_est)}: estimating {len(split_reqs)} split parts")
        split_est = self._estimate(split_reqs)
        parts: Dict[Tuple[str, int, int], List[Tuple[HlsConfig, Estimate]]] = {}
        joins: Dict[Tuple[int, int, str], Estimate] = {}
        for (kind, i, e, k, c), est in zip(split_meta, split_est):
            if kind == "join":
                joins[(i, k, c.precision)] = est
            else:
                parts.setdefault((kind, i, k), []).append((c, est))
        for (kind, i, k), pairs in parts.items():
            e = blocked[i]["end"]
            layer = self.specs[i]
            group = [s.name for s in self.specs[i:e]]
            info = blocked[i].setdefault("splits", [])
            for c, est in pairs:
                jest = joins.get((i, k, c.precision)) if kind == "input" else None
                peak = max(est.peak(self.board, self.opt.fit), jest.peak(self.board, self.opt.fit) if jest else 0.0)
                info.append((peak, kind, k, c, est, jest))
            part_specs = {"neuron": lambda c: (neuron_part(self.specs[i], _split_sizes(self.specs[i].units, k)[0]),) + tuple(self.specs[i + 1 : blocked[i]["end"]]),
                          "input": lambda c: (input_part(self.specs[i], _split_sizes(self.specs[i].input_shape[-1], k)[0], bias=True),)}[kind]
            feas = self._pareto_configs([(c, est) for c, est in pairs if self._usable(part_specs(c), c, est)])
            n_in = self._elements_at(i)
            n_out = self._elements_at(e)
            for c, est in feas:
                if kind == "neuron":
                    sizes = _split_sizes(layer.units, k)
                    ps = [PartChoice("neuron", group, (neuron_part(layer, sizes[j]),) + tuple(self.specs[i + 1 : e]), c, est,
                                     {"layer": layer.name, "kind": "neuron", "part": j, "parts": k}) for j in range(k)]
                    hop = k * _bytes(n_in, self.link_precision, self.opt.data_width)
                    opts.append(_Option(i, e, [StageChoice("neuron", ps, hop, self._hop_us(hop))], None, (layer.name, "neuron", k)))
                else:
                    jest = joins[(i, k, c.precision)]
                    if not self._fits(jest):
                        continue
                    sizes = _split_sizes(layer.input_shape[-1], k)
                    ps = [PartChoice("input", [layer.name], (input_part(layer, sizes[j], bias=j == 0),), c, est,
                                     {"layer": layer.name, "kind": "input", "part": j, "parts": k}) for j in range(k)]
                    # the sender of the input slices moves every slice: the whole tensor, padded per slice
                    per_elem = n_in // layer.input_shape[-1]
                    hop = sum(_bytes(per_elem * s, self.link_precision, self.opt.data_width) for s in sizes)
                    jspecs = tuple(join_layers(layer, k)) + tuple(self.specs[i + 1 : e])
                    jpart = PartChoice("join", group, jspecs, HlsConfig(c.precision, 1, "Latency", fifo_depth=c.fifo_depth), jest,
                                       {"layer": layer.name, "kind": "join", "parts": k})
                    jhop = k * _bytes(n_out, self.link_precision, self.opt.data_width)
                    opts.append(_Option(i, e, [StageChoice("input", ps, hop, self._hop_us(hop)),
                                               StageChoice("join", [jpart], jhop, self._hop_us(jhop))], None,
                                        (layer.name, "input", k)))
        return opts, blocked

    def _monotone(self, seg_est) -> None:
        """Raise each run's figures to those of the runs it contains, per configuration.

        A partition computing layers i..j-1 holds the logic of every sub-run, so it cannot need fewer
        resources or cycles. rule4ml, far outside the sizes it was trained on, can predict less for a run
        than for one of its layers (a 1M-weight model "fitting" at 3% LUT while its first layer alone does
        not fit); without this rule the planner would trust that. Raised figures carry a note naming the run."""
        bset = self.bounds
        nxt = {b: bset[k + 1] for k, b in enumerate(bset[:-1])}
        prv = {b: bset[k - 1] for k, b in enumerate(bset) if k > 0}
        for (i, j) in sorted(seg_est, key=lambda ij: ij[1] - ij[0]):
            subs = [(i, prv[j]), (nxt[i], j)] if nxt[i] < j else []
            if not subs:
                continue
            pairs = seg_est[(i, j)]
            for n, (c, e) in enumerate(pairs):
                for sub in subs:
                    se = seg_est[sub][n][1]
                    names = f"{self.specs[sub[0]].name}..{self.specs[sub[1] - 1].name}" if sub[1] - sub[0] > 1 else self.specs[sub[0]].name
                    e = e.at_least(se, f"raised to the estimate of {names}, which it contains (the estimator predicted less for the whole run)")
                pairs[n] = (c, e)

    # -- the dynamic programme ------------------------------------------------------------------------------
    def run(self, pareto: bool = False) -> SearchResult:
        """Search (dynamic programming over the places to cut) and return a SearchResult. Raises NoFitError,
        saying which layer fits no board and why, when no plan fits the options."""
        opts, blocked = self.options()
        by_start: Dict[int, List[_Option]] = {}
        for o in opts:
            by_start.setdefault(o.start, []).append(o)
        want = self.opt.boards_exact
        final, exact = self._dp(by_start, want or self.opt.boards_available, per_count=want is not None)
        if want is not None:
            final = [lab for lab in final if lab[0] == want]
            if not final:
                self._raise_no_exact(want, opts, blocked, by_start)
        if not final:
            self._raise_no_fit(opts, blocked, by_start)
        L = len(self.specs)
        out_hop = self._hop_us(_bytes(self._elements_at(L), self.link_precision, self.opt.data_width))
        plans = [self._plan(lab, out_hop, exact) for lab in final]
        key = {
            "boards": lambda p: (p.boards, p.latency_us, p.interval_cycles),
            "latency": lambda p: (p.latency_us, p.boards, p.interval_cycles),
            "interval": lambda p: (p.interval_cycles, p.boards, p.latency_us),
        }[self.opt.objective]
        front = sorted(plans, key=lambda p: (p.boards, p.latency_us, p.interval_cycles))
        return SearchResult(min(plans, key=key), front if pareto else [], self.n_estimates, dict(self.est.stats))

    def _dp(self, by_start: Dict[int, List[_Option]], limit: Optional[int],
            per_count: bool = False) -> Tuple[List[tuple], bool]:
        """Non-dominated labels (boards, latency without the last hop, interval, back pointer) at the end.
        per_count: dominance only among labels of the same board count (for exactly-N searches: a plan
        that uses more boards must not be dropped because a smaller one is as fast)."""
        L = len(self.specs)
        clock = self.board.clock_mhz
        labels: Dict[int, List[tuple]] = {0: [(0, 0.0, 0.0, None)]}
        exact = True
        for b in self.bounds:
            here = _nondominated(labels.get(b, []), per_count)
            if not here:
                continue
            if len(here) > self.opt.max_labels:
                exact = False
                lat0 = max(1e-9, min(l[1] for l in here))
                itv0 = max(1e-9, min(l[2] for l in here))
                here = sorted(here, key=lambda l: l[0] + l[1] / lat0 + l[2] / itv0)[: self.opt.max_labels]
            labels[b] = here
            if b == L:
                break
            for o in by_start.get(b, []):
                lat, nb, itv = o.latency(clock), o.boards, o.interval
                for lab in here:
                    boards = lab[0] + nb
                    if limit is not None and boards > limit:
                        continue
                    labels.setdefault(o.end, []).append((boards, lab[1] + lat, max(lab[2], itv), (lab, o)))
        return labels.get(L, []), exact

    def _plan(self, label, out_hop: float, exact: bool) -> PlanChoice:
        chain = []
        lab = label
        while lab[3] is not None:
            prev, o = lab[3]
            chain.append(o)
            lab = prev
        chain.reverse()
        stages = [s for o in chain for s in o.stages]
        cuts = [o.cut_after for o in chain if o.cut_after and o.end < len(self.specs)]
        neurons = {o.split[0]: o.split[2] for o in chain if o.split and o.split[1] == "neuron"}
        inputs = {o.split[0]: o.split[2] for o in chain if o.split and o.split[1] == "input"}
        return PlanChoice(stages, label[0], label[1] + out_hop, label[2], out_hop, exact, cuts, neurons, inputs)

    def _raise_no_exact(self, want: int, opts: List[_Option], blocked: Dict[int, dict], by_start) -> None:
        counts = board_counts(by_start, self.bounds, len(self.specs))
        if not counts:
            self._raise_no_fit(opts, blocked, by_start)  # names the layer that fits nowhere
        cap = f"{self.opt.cap:.0%}"
        others = "" if len(counts) == counts[-1] - counts[0] + 1 else f" (possible: {', '.join(map(str, counts))})"
        raise NoFitError(
            f"--n-boards {want}: no plan of exactly {want} {self.board.name} board(s) under the {cap} cap; "
            f"the fewest boards possible is {counts[0]}, the most {counts[-1]}{others} "
            f"(cuts between layers; a layer is split only when it does not fit one board): "
            f"{self._next_step(f'plan with --n-boards {counts[0]} (or without --n-boards: the fewest)')}"
        )

    def _next_step(self, first: str) -> str:
        """What a refused user can type next: `first`, then the options of this search that would need fewer
        boards (the default FIFO depths, smaller precisions)."""
        more = []
        if self.opt.fifo_depth == "default":
            more.append("without --fifo-depth default (optimized depths, the default, cost less BRAM; whether "
                        "that saves a board, `plan` without it says)")
        if not any(FixedType.parse(p).width <= 8 for p in self.opt.precisions):
            more.append("allow smaller precisions (--precisions \"ap_fixed<8,3>\" ...; they may cost the model its "
                        "accuracy: `splitrack verify PLAN --data YOUR.npz` measures it)")
        return first + "".join(f", or {m}" for m in more)

    def _raise_no_fit(self, opts: List[_Option], blocked: Dict[int, dict], by_start) -> None:
        covered = set()
        for o in opts:
            covered.update(range(o.start, o.end))
        cap = f"{self.opt.cap:.0%}"
        for i in range(len(self.specs)):
            if i in covered:
                continue
            start = max(b for b in self.bounds if b <= i)
            info = blocked.get(start)
            layer = self.specs[start]
            if info is None:  # cannot happen for a chain: every layer is in some run; kept for a clear message
                raise NoFitError(f"layer {self.specs[i].name} cannot be placed on a {self.board.name}")
            best_c, best_e = info["single"]
            peak, res = _peak(best_e, self.board, self.opt.fit)
            how = f"alone at {_cfg(best_c)}"
            for sp, kind, k, c, est, jest in info.get("splits", []):
                if sp < peak:
                    worst = est if est.peak(self.board, self.opt.fit) >= (jest.peak(self.board, self.opt.fit) if jest else 0) else jest
                    peak, res = _peak(worst, self.board, self.opt.fit)
                    how = f"{kind}-split in {k} parts at {_cfg(c)}" + (" (the join is the limit)" if worst is jest else "")
            what = f"{layer.kind} {'x'.join(map(str, layer.input_shape))} -> {'x'.join(map(str, layer.output_shape))}"
            if info.get("branch"):
                hint = "it lies inside a branch, and split_model splits layers on the main path only: reduce it, or choose a larger board"
            elif layer.kind in SPLITTABLE and start not in self.unsplittable:
                hint = (f"raise --max-parts (now {self.opt.max_parts}), allow smaller precisions (--precisions) or larger "
                        "reuse factors, or choose a larger board")
            else:
                hint = "this layer type cannot be split: reduce it, or choose a larger board"
            raise NoFitError(
                f"layer {layer.name} ({what}) does not fit a {self.board.name} under the {cap} cap: the smallest "
                f"utilisation reachable is {peak:.0%} of {res.upper()} ({how}); {hint}"
            )
        unlimited, _ = self._dp(by_start, None)
        fewest = min(l[0] for l in unlimited)
        raise NoFitError(
            f"no plan fits in {self.opt.boards_available} board(s) of type {self.board.name} under the {cap} cap: "
            f"the fewest boards that fit is {fewest}: "
            f"{self._next_step(f'raise --boards-available to {fewest} or more')}"
        )


def board_counts(by_start: Dict[int, List["_Option"]], bounds: Sequence[int], end: int) -> List[int]:
    """Every number of boards some complete plan can use (sorted; [] when no plan fits at all)."""
    reach: Dict[int, set] = {0: {0}}
    for b in bounds:
        here = reach.get(b)
        if not here:
            continue
        for o in by_start.get(b, []):
            reach.setdefault(o.end, set()).update(n + o.boards for n in here)
    return sorted(reach.get(end, ()))


def _nondominated(labels: List[tuple], per_count: bool = False) -> List[tuple]:
    """Labels not dominated on (boards, latency, interval); equal triples keep the first. per_count: a label
    is only dominated by one with the same number of boards."""
    labels = sorted(labels, key=lambda l: (l[0], l[1], l[2]))
    keep: List[tuple] = []
    for lab in labels:
        if any((k[0] == lab[0] if per_count else k[0] <= lab[0]) and k[1] <= lab[1] + 1e-9 and k[2] <= lab[2]
               for k in keep):
            continue
        keep.append(lab)
    return keep


def _peak(e: Estimate, board: Device, at: str = "high") -> Tuple[float, str]:
    u = e.utilization(board, at)
    r = max(u, key=u.get)
    return u[r], r


def _cfg(c: HlsConfig) -> str:
    return f"{c.precision} reuse {c.reuse_factor} {c.strategy}"


def plan_search(specs: Sequence[LayerSpec], estimator: Estimator, options: SearchOptions, pareto: bool = False,
                progress=None, reads=None, unsplittable: Sequence[int] = ()) -> SearchResult:
    """Search partitions of the layers `specs` with `estimator` (estimators.make) under `options`;
    returns a SearchResult (with the Pareto front when pareto=True). `reads` gives the graph (see
    layerspec.model_specs; a chain without it). Raises NoFitError when nothing fits."""
    return Planner(specs, estimator, options, progress, reads=reads, unsplittable=unsplittable).run(pareto)
