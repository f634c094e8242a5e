"""The Plan: ordered stages of partitions and the contracts of every link. The single source of truth.

A plan lives in a folder: `plan.json` plus one sub-folder per partition holding its Keras sub-model
(`model.keras`) and hls4ml configuration (`hls4ml.json`). This module reads and writes that folder without
TensorFlow, so the harness (and a board) can use plans without it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from .contract import Contract, ContractError
from .errors import UserError
from .names import name_problem
from .plan_schema import plan_dict_problem
from .untrusted import MODEL_LIMIT, checked_path, read_json

PLAN_FILE = "plan.json"
FORMAT = 1
HOST = "host"


class PlanError(UserError, ValueError):
    """A plan folder that is missing, malformed or inconsistent."""


@dataclass
class Partition:
    """A Keras sub-model plus its hls4ml configuration, running on one board.

    kind: "layers" (a contiguous run of layers), "neuron" (one part of a neuron split: a slice of the
    output units or filters), "input" (one part of an input split: a partial sum over a slice of the
    inputs or input channels, no activation), "join" (sums input-split partial sums, adds the bias,
    applies the activation, then any layers that follow in the same stage).

    A partition cut out of a graph may read several tensors and produce several: `input_shapes` /
    `output_shapes` then list them (in the order of its Keras model's inputs / outputs) and `input_shape` /
    `output_shape` are the flat concatenation ([total elements]) that its one input and one output stream
    carry. Both are None for a partition with one input and one output.
    """

    name: str
    stage: int
    kind: str
    layers: List[str]
    input_shape: List[int]
    output_shape: List[int]
    input_precision: str
    output_precision: str
    hls: Dict[str, Any]
    weights_sha256: str = ""
    split: Optional[Dict[str, Any]] = None
    estimate: Optional[Dict[str, Any]] = None
    input_shapes: Optional[List[List[int]]] = None
    output_shapes: Optional[List[List[int]]] = None

    @property
    def model_file(self) -> str:
        """Path of its Keras sub-model relative to the plan folder: '<name>/model.keras'."""
        return f"{self.name}/model.keras"

    @property
    def hls_file(self) -> str:
        """Path of its hls4ml configuration relative to the plan folder: '<name>/hls4ml.json'."""
        return f"{self.name}/hls4ml.json"


def _partition_dict(p: Partition) -> Dict[str, Any]:
    d = asdict(p)
    for k in ("input_shapes", "output_shapes"):  # written only for several: the plans of chains keep their hash
        if d[k] is None:
            del d[k]
    return d


@dataclass
class Stage:
    """One step of the pipeline: its index, its kind ('layers', 'neuron', 'input', 'join') and the names of
    the partitions that run side by side in it."""

    index: int
    kind: str  # "layers", "neuron", "input", "join"
    partitions: List[str]


@dataclass
class Plan:
    """A split model: stages of partitions, and the contracts (`Contract`) of every link between them and the
    host. `root` is the plan folder once loaded or saved; `hash` identifies the content."""

    model: Dict[str, Any]  # name, input_shape, output_shape, output_precision, source sha256
    stages: List[Stage]
    partitions: Dict[str, Partition]
    links: List[Contract]
    board: str = "pynq-z2"
    hls_defaults: Dict[str, Any] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    root: Optional[Path] = None  # folder the plan was loaded from / saved to (not serialised)

    # --- queries -----------------------------------------------------------------------------------
    def partition(self, name: str) -> Partition:
        """The partition called `name`; raises PlanError when there is none."""
        try:
            return self.partitions[name]
        except KeyError:
            raise PlanError(f"no partition {name!r} in plan; partitions are {', '.join(self.partitions)}") from None

    def ordered_partitions(self) -> List[Partition]:
        """Every partition, stage by stage in stage order."""
        return [self.partitions[n] for st in self.stages for n in st.partitions]

    def inputs_of(self, name: str) -> List[Contract]:
        """The links into partition `name` (or 'host': the model's outputs), by contract index."""
        return sorted((c for c in self.links if c.dst == name), key=lambda c: c.index)

    def outputs_of(self, name: str) -> List[Contract]:
        """The links out of partition `name` (or 'host': the model's inputs), in plan order."""
        return [c for c in self.links if c.src == name]

    @property
    def input_links(self) -> List[Contract]:
        """The links from the host into the first stage (what the host sends per frame)."""
        return [c for c in self.links if c.src == HOST]

    @property
    def output_links(self) -> List[Contract]:
        """The links back to the host, by contract index (what the host receives per frame)."""
        return self.inputs_of(HOST)

    def path(self, rel: str) -> Path:
        """`rel` (e.g. a partition's model_file) under the plan folder; raises PlanError before the plan has one."""
        if self.root is None:
            raise PlanError("plan has no folder yet: save() it first")
        return self.root / rel

    def file(self, rel: str, limit: int = MODEL_LIMIT) -> Path:
        """The file `rel` of the plan folder, resolved, once checked to be a regular file of at most `limit`
        bytes inside the folder (a link out of the folder, a FIFO or a device such as /dev/zero is refused
        before anything reads it; see splitting.untrusted). Raises PlanError, naming the file."""
        f = self.path(rel)
        try:
            return checked_path(f, limit, str(f), inside=self.root, error=PlanError)
        except FileNotFoundError:
            raise PlanError(f"{f} is missing: the plan folder is incomplete; write it again with `splitrack split`") from None

    # --- hashing and serialisation -----------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        """The content of plan.json without its hash (format, board, model, hls_defaults, stages, partitions in
        stage order, links, notes): JSON-able."""
        return {
            "format": FORMAT,
            "board": self.board,
            "model": self.model,
            "hls_defaults": self.hls_defaults,
            "stages": [asdict(s) for s in self.stages],
            "partitions": [_partition_dict(self.partitions[p.name]) for p in self.ordered_partitions()],
            "links": [c.to_dict() for c in self.links],
            "notes": self.notes,
        }

    @property
    def hash(self) -> str:
        """Content hash: of everything in plan.json, partition weights included by their sha256."""
        body = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    def save(self, root: Path) -> Path:
        """Write plan.json (with `hash`) and each partition's hls4ml.json under `root` (created if needed) and make
        it the plan's folder; returns the plan.json path. The Keras sub-models are written by split_model."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        d = self.to_dict()
        d["hash"] = self.hash
        (root / PLAN_FILE).write_text(json.dumps(d, indent=1) + "\n")
        for p in self.partitions.values():
            (root / p.name).mkdir(exist_ok=True)
            (root / p.hls_file).write_text(json.dumps(p.hls, indent=1, sort_keys=True) + "\n")
        return root / PLAN_FILE

    @classmethod
    def from_dict(cls, d: Dict[str, Any], root: Optional[Path] = None) -> "Plan":
        """The plan of a plan.json dict, checked (`check`). Raises PlanError for another format, a malformed
        dict or contract, or an inconsistent plan."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            got = d.get("format") if isinstance(d, dict) else d
            raise PlanError(f"plan format {got!r} is not {FORMAT}: re-create the plan with this splitrack")
        bad = plan_dict_problem(d)
        if bad:
            raise PlanError(f"plan.json is malformed ({bad}): re-create it with `splitrack split` or `splitrack plan`")
        try:
            parts = {p["name"]: Partition(**p) for p in d["partitions"]}
            plan = cls(
                model=d["model"],
                stages=[Stage(**s) for s in d["stages"]],
                partitions=parts,
                links=[Contract.from_dict(c) for c in d["links"]],
                board=d.get("board", "pynq-z2"),
                hls_defaults=d.get("hls_defaults", {}),
                notes=d.get("notes", []),
                root=root,
            )
        except (KeyError, TypeError, ValueError, ContractError) as e:
            raise PlanError(f"plan.json is malformed ({e}): re-create it with `splitrack split` or `splitrack plan`") from None
        plan.check()
        return plan

    @classmethod
    def load(cls, root: Path) -> "Plan":
        """Read and check the plan in folder `root` (or the plan.json file `root`). Raises PlanError when the
        file is missing, not JSON, has no hash, does not match its hash, or fails from_dict."""
        root = Path(root)
        f = root / PLAN_FILE if root.is_dir() else root
        try:  # bounded, never blocking, depth-limited: a plan folder is untrusted input
            d = read_json(f, str(f), inside=f.parent, error=PlanError)
        except FileNotFoundError:
            raise PlanError(f"{f} not found: give the folder written by `splitrack split` or `splitrack plan`") from None
        if not isinstance(d, dict) or not isinstance(d.get("hash"), str):
            raise PlanError(f"{f} has no content hash: it was not written by splitrack (or was edited by hand); "
                            "re-create it with `splitrack split` or `splitrack plan`")
        plan = cls.from_dict(d, root=f.parent)
        if d["hash"] != plan.hash:
            raise PlanError(f"{f}: content hash {d['hash']} does not match its content ({plan.hash}); it was edited by hand")
        return plan

    def stage_of(self, name: str) -> int:
        """Stage index of partition `name`; -1 for the host as a source, len(stages) as a destination."""
        return self.partitions[name].stage if name in self.partitions else -1

    @property
    def skip_links(self) -> List[Contract]:
        """Links that jump over at least one stage (a skip connection cut across several stages)."""
        last = len(self.stages)
        return [c for c in self.links
                if (self.partitions[c.dst].stage if c.dst in self.partitions else last) - self.stage_of(c.src) > 1]

    def check(self) -> None:
        """Structural consistency: every partition in exactly one stage (the one its `stage` names), links
        connect known ends, no partition is called `host` (the links' name for the host)."""
        for name, p in self.partitions.items():  # names reach boards (file names, messages): data only
            problem = name_problem("partition", name) or (
                "" if p.name == name else f"partition {name!r} calls itself {p.name!r}")
            if not problem and name.lower() == HOST:
                problem = (f"partition {name!r}: {HOST!r} is what links call the host, not a partition name; "
                           "rename the partition")
            if problem:
                raise PlanError(problem)
        for i, st in enumerate(self.stages):
            for n in st.partitions:
                if n in self.partitions and self.partitions[n].stage != st.index:
                    raise PlanError(f"partition {n} says it is in stage {self.partitions[n].stage}, but stage "
                                    f"{st.index} lists it")
        seen = [n for s in self.stages for n in s.partitions]
        if sorted(seen) != sorted(self.partitions):
            raise PlanError("stages and partitions disagree: every partition must be in exactly one stage")
        names = set(self.partitions) | {HOST}
        for c in self.links:
            if c.src not in names or c.dst not in names:
                raise PlanError(f"link {c.src}->{c.dst} names an unknown partition")
        for c in self.links:
            if c.src != HOST and c.dst != HOST and self.partitions[c.src].stage >= self.partitions[c.dst].stage:
                raise PlanError(f"link {c.src}->{c.dst} goes back or sideways (stage {self.partitions[c.src].stage} "
                                f"to {self.partitions[c.dst].stage}): links go from a stage to a later one")
        for p in self.partitions.values():
            if not self.inputs_of(p.name):
                raise PlanError(f"partition {p.name} has no incoming link")
            if not self.outputs_of(p.name):
                raise PlanError(f"partition {p.name} has no outgoing link")
