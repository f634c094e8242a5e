"""Wiring: from a Plan and where each partition's agent listens, the config of every agent.

The agent config is plain data (see `harness/board/agent.py` for the schema); this module only fills it in from
the plan: the contracts of a partition's incoming and outgoing links, the next hop's address for each
outgoing link ("host" for links into the host), the partition ids that name partitions in timestamp records.
The `Wiring` it returns is what the host needs to feed and read the rack (`harness.measure.stream`), and it saves to
JSON so that `splitrack run` can pick up a deployment made by `splitrack deploy`.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from splitting.contract import Contract
from splitting.errors import UserError
from splitting.plan import HOST, Plan

WIRING_FILE = "wiring.json"


class WiringError(UserError, ValueError):
    """A placement that does not cover the plan, or a wiring file that cannot be read."""


@dataclass
class Endpoint:
    """Where a partition's agent runs: the board, and the address the host and other agents reach it at."""

    board: str
    host: str
    port: int

    @property
    def address(self):
        return (self.host, self.port)


@dataclass
class Wiring:
    """A plan placed on boards: every agent's config and what the host sends and reads."""

    plan_hash: str
    endpoints: Dict[str, Endpoint]  # partition -> agent address
    configs: Dict[str, Dict[str, Any]]  # partition -> agent config (JSON-able)
    partition_ids: Dict[str, int]  # partition -> id used in timestamp records
    stages: Dict[str, int]  # partition -> stage index
    input_links: List[Contract]  # host -> partition, in plan order
    output_links: List[Contract]  # partition -> host, in assembly (`index`) order
    output_shape: List[int]

    def partition_name(self, pid: int) -> str:
        for name, i in self.partition_ids.items():
            if i == pid:
                return name
        return "host" if pid == 0xFFFF else f"partition#{pid}"

    def describe(self, partition: str) -> str:
        """'p2 on board vb2 (stage 2)': how errors name a place in the pipeline."""
        ep = self.endpoints[partition]
        return f"{partition} on board {ep.board} (stage {self.stages[partition]})"

    def to_dict(self) -> Dict[str, Any]:
        return {
            "plan_hash": self.plan_hash,
            "endpoints": {k: asdict(v) for k, v in self.endpoints.items()},
            "configs": self.configs,
            "partition_ids": self.partition_ids,
            "stages": self.stages,
            "input_links": [c.to_dict() for c in self.input_links],
            "output_links": [c.to_dict() for c in self.output_links],
            "output_shape": list(self.output_shape),
        }

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Wiring":
        try:
            return cls(
                plan_hash=d["plan_hash"],
                endpoints={k: Endpoint(**v) for k, v in d["endpoints"].items()},
                configs=d["configs"],
                partition_ids={k: int(v) for k, v in d["partition_ids"].items()},
                stages={k: int(v) for k, v in d["stages"].items()},
                input_links=[Contract.from_dict(c) for c in d["input_links"]],
                output_links=[Contract.from_dict(c) for c in d["output_links"]],
                output_shape=list(d["output_shape"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise WiringError(f"wiring is malformed ({e}): deploy the plan again") from None

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> "Wiring":
        path = Path(path)
        if not path.is_file():
            raise WiringError(f"{path} not found: deploy the plan first (`splitrack deploy`)")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as e:
            raise WiringError(f"{path} is not valid JSON ({e.msg}, line {e.lineno}): deploy the plan again") from None


def partition_ids(plan: Plan) -> Dict[str, int]:
    return {p.name: i for i, p in enumerate(plan.ordered_partitions())}


def incoming_elements(plan: Plan, name: str) -> int:
    """Elements of a partition's assembled input: what its emulation library takes (n_in)."""
    return sum(c.elements for c in plan.inputs_of(name))


def emulation_backend(plan: Plan, name: str, library: str, project: str) -> Dict[str, Any]:
    """Backend entry for a virtual board: `library` as the board sees it (path on the board)."""
    part = plan.partition(name)
    return {"kind": "emulation", "library": str(library), "project": project,
            "n_in": incoming_elements(plan, name), "n_out": int(math.prod(part.output_shape))}


def overlay_backend(plan: Plan, name: str, bitfile: str, hwh: str, in_dtype: str = "float32",
                    out_dtype: str = "float32") -> Dict[str, Any]:
    """Backend entry for a real PYNQ-Z2: the partition's bitstream and .hwh as the board sees them."""
    part = plan.partition(name)
    return {"kind": "overlay", "bitfile": str(bitfile), "hwh": str(hwh), "n_in": incoming_elements(plan, name),
            "n_out": int(math.prod(part.output_shape)), "in_dtype": in_dtype, "out_dtype": out_dtype}


def agent_config(plan: Plan, name: str, endpoints: Mapping[str, Endpoint], backend: Dict[str, Any], *,
                 listen_host: str = "0.0.0.0", listen_port: Optional[int] = None,
                 timing: Optional[Dict[str, Any]] = None, clock_skew_ns: int = 0, in_flight: int = 8,
                 log: Optional[str] = None, pidfile: Optional[str] = None,
                 faults: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The config of one partition's agent. `endpoints` must hold the partition's next hops (not itself,
    unless listen_port is None: then it gives the port to listen on)."""
    part = plan.partition(name)
    outputs = []
    for c in plan.outputs_of(name):
        if c.dst == HOST:
            to: Any = "host"
        else:
            if c.dst not in endpoints:
                raise WiringError(f"partition {name} sends to {c.dst}, which has no board: place every partition")
            ep = endpoints[c.dst]
            to = {"host": ep.host, "port": ep.port}
        outputs.append({"contract": c.to_dict(), "to": to})
    if listen_port is None:
        if name not in endpoints:
            raise WiringError(f"partition {name} has no board: place every partition")
        listen_port = endpoints[name].port
    board = endpoints[name].board if name in endpoints else ""
    cfg: Dict[str, Any] = {
        "board": board,
        "partition": name,
        "partition_id": partition_ids(plan)[name],
        "partition_ids": partition_ids(plan),
        "stage": part.stage,
        "plan_hash": plan.hash,
        "listen": {"host": listen_host, "port": int(listen_port)},
        "backend": backend,
        "output_shape": list(part.output_shape),
        "inputs": [c.to_dict() for c in plan.inputs_of(name)],
        "outputs": outputs,
        "timing": timing,
        "clock_skew_ns": int(clock_skew_ns),
        "in_flight": int(in_flight),
        "log": log or f"agent-{name}.log",
        "pidfile": pidfile or f"agent-{name}.pid",
    }
    if faults:
        cfg["faults"] = faults
    return cfg


def wire(plan: Plan, endpoints: Mapping[str, Endpoint], configs: Mapping[str, Dict[str, Any]]) -> Wiring:
    """The Wiring of a placed plan (configs as built by `agent_config`)."""
    missing = [p for p in plan.partitions if p not in endpoints or p not in configs]
    if missing:
        raise WiringError(f"partition(s) {', '.join(missing)} have no board or no agent config: place every partition")
    return Wiring(
        plan_hash=plan.hash,
        endpoints={k: endpoints[k] for k in plan.partitions},
        configs={k: configs[k] for k in plan.partitions},
        partition_ids=partition_ids(plan),
        stages={p.name: p.stage for p in plan.ordered_partitions()},
        input_links=list(plan.input_links),
        output_links=list(plan.output_links),
        output_shape=_output_shape(plan),
    )


def _output_shape(plan: Plan) -> List[int]:
    links = plan.output_links
    if len(links) == 1:
        return list(links[0].shape)
    shapes = [list(c.shape) for c in links]
    axis = links[0].axis % len(shapes[0])
    out = list(shapes[0])
    out[axis] = sum(s[axis] for s in shapes)
    return out
