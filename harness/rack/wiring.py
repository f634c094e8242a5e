"""Wiring: from a Plan and where each partition's agent listens, the config of every agent.

The agent config is `harness.agent.agent_config.AgentConfig` (the agent reads the same dataclass); this module
only fills it in from the plan: the contracts of a partition's incoming and outgoing links, the next hop's
address for each outgoing link ("host" for links into the host), the partition ids that name partitions in
timestamp records. The `Wiring` it returns is what the host needs to feed and read the rack
(`harness.measure.stream`), and it saves to JSON so that `splitrack run` can pick up a deployment made by
`splitrack deploy`.

The deployment's secret (what every connection to an agent must prove) is held by `Wiring.secret`, never in
the JSON: the plan folder is shared and committed. `save` keeps it in a file of mode 0600 in the user's
state folder (`secret_path`), `load` reads it back.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from harness.agent import wire as wire_format  # (`wire` below is this module's function)
from harness.agent.agent_config import AgentConfig
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
        """(host, port) where the agent accepts connections."""
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
    secret: Optional[bytes] = field(default=None, repr=False, compare=False)  # never in to_dict
    records: Dict[str, int] = field(default_factory=dict)  # partition -> records per frame it sends (records_out)

    def partition_name(self, pid: int) -> str:
        """The partition with id `pid` in timestamp records; 'host' for 0xFFFF (wire.HOST_ID), else
        'partition#<pid>' when no partition has it."""
        names = self.__dict__.get("_names_by_id")
        if names is None or len(names) != len(self.partition_ids):  # a dict, once: called per timestamp record
            names = self.__dict__["_names_by_id"] = {i: n for n, i in self.partition_ids.items()}
        name = names.get(pid)
        if name is not None:
            return name
        return "host" if pid == 0xFFFF else f"partition#{pid}"

    def agent_id(self, partition: str) -> bytes:
        """The identity the agent of `partition` proves in a handshake (wire.agent_id: plan, partition and the
        endpoint it is reached at); what the host's connection to it is bound to."""
        ep = self.endpoints[partition]
        return wire_format.agent_id(self.plan_hash, partition, ep.host, ep.port)

    def host_id(self) -> bytes:
        """The host's identity in a handshake (wire.peer_id of 'host' in this deployment's plan)."""
        return wire_format.peer_id(self.plan_hash, wire_format.HOST)

    def records_to_host(self) -> int:
        """The timestamp records an output frame carries (records_out of the partitions that send to the host):
        what the host's reader accepts, and no more (wire.MAX_RECORDS for a wiring without `records`)."""
        if not self.records:
            return wire_format.MAX_RECORDS
        return max((self.records.get(c.src, 0) for c in self.output_links), default=0)

    def describe(self, partition: str) -> str:
        """'p2 on board vb2 (stage 2)': how errors name a place in the pipeline."""
        ep = self.endpoints[partition]
        return f"{partition} on board {ep.board} (stage {self.stages[partition]})"

    def to_dict(self) -> Dict[str, Any]:
        """The wiring as a JSON-able dict (what wiring.json holds); the secret is left out."""
        return {
            "plan_hash": self.plan_hash,
            "endpoints": {k: asdict(v) for k, v in self.endpoints.items()},
            "configs": self.configs,
            "partition_ids": self.partition_ids,
            "stages": self.stages,
            "input_links": [c.to_dict() for c in self.input_links],
            "output_links": [c.to_dict() for c in self.output_links],
            "output_shape": list(self.output_shape),
            "records": dict(self.records),
        }

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Wiring":
        """The Wiring of a wiring.json dict, without its secret; raises WiringError when it is malformed."""
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
                records={str(k): int(v) for k, v in (d.get("records") or {}).items()},
            )
        except (KeyError, TypeError, ValueError) as e:
            raise WiringError(f"wiring is malformed ({e}): deploy the plan again") from None

    def save(self, path: Path) -> Path:
        """The wiring as JSON at `path`; its secret (if any) in `secret_path(path)`, mode 0600."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        if self.secret is not None:
            write_secret_file(secret_path(path), self.secret)
        return path

    @classmethod
    def load(cls, path: Path) -> "Wiring":
        """Read wiring.json at `path` and its secret from `secret_path(path)`. Raises WiringError when the file
        is missing, not JSON or malformed, or the secret file is missing or unreadable."""
        from splitting.untrusted import read_json

        path = Path(path)
        try:  # bounded, never blocking (it lives in the plan folder, which users share)
            w = cls.from_dict(read_json(path, str(path), error=WiringError))
        except FileNotFoundError:
            raise WiringError(f"{path} not found: deploy the plan first (`splitrack deploy`)") from None
        except (KeyError, TypeError, ValueError) as e:
            raise WiringError(f"{path} is malformed ({e}): deploy the plan again") from None
        key = secret_path(path)
        try:
            w.secret = bytes.fromhex(key.read_text().strip())
        except FileNotFoundError:
            raise WiringError(f"no secret for the deployment of {path} on this machine (looked in {key}): the agents "
                              "answer only the user who deployed them; deploy the plan again") from None
        except (OSError, ValueError) as e:
            raise WiringError(f"the secret file {key} is unreadable ({e}): deploy the plan again") from None
        return w


def secret_path(wiring_path: Path) -> Path:
    """Where the secret of the deployment whose wiring is at `wiring_path` is kept on this machine: the user's
    state folder ($SPLITRACK_STATE, else platformdirs'), one file per wiring file, outside the plan folder."""
    root = os.environ.get("SPLITRACK_STATE")
    if not root:
        import platformdirs

        root = platformdirs.user_state_dir("splitrack")
    key = hashlib.sha256(str(Path(wiring_path).resolve()).encode()).hexdigest()[:24]
    return Path(root) / "secrets" / f"{key}.secret"


def write_secret_file(path: Path, secret: bytes) -> Path:
    """`secret` as hex in `path`, created with mode 0600 (never readable by others, not even for a moment)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret.hex() + "\n")
    os.replace(tmp, path)
    return path


def partition_ids(plan: Plan) -> Dict[str, int]:
    """Partition name -> id used in timestamp records: 0, 1, ... in stage order (plan.ordered_partitions)."""
    return {p.name: i for i, p in enumerate(plan.ordered_partitions())}


def records_out(plan: Plan) -> Dict[str, int]:
    """Partition -> the timestamp records each frame it sends carries: one per incoming link of every
    partition on the frame's paths from the host (an agent forwards the records of all its parts and adds one
    per incoming link). What a reader of that partition's frames may accept, and no more."""
    out: Dict[str, int] = {HOST: 0}
    for p in plan.ordered_partitions():  # links run from a stage to a later one: producers come first
        ins = plan.inputs_of(p.name)
        out[p.name] = len(ins) + sum(out.get(c.src, 0) for c in ins)
    del out[HOST]
    return out


def incoming_elements(plan: Plan, name: str) -> int:
    """Elements of a partition's assembled input: what its emulation library takes (n_in)."""
    return sum(c.elements for c in plan.inputs_of(name))


def emulation_backend(plan: Plan, name: str, library: str, project: str) -> Dict[str, Any]:
    """Backend entry for a virtual board: `library` as the board sees it (path on the board)."""
    part = plan.partition(name)
    # a partition with several inputs or outputs: the sizes of each (its frame is their flat concatenation,
    # the library's entry point takes one pointer per input and output: splitting/emulation.py)
    n_in = [int(math.prod(s)) for s in part.input_shapes] if part.input_shapes else incoming_elements(plan, name)
    n_out = [int(math.prod(s)) for s in part.output_shapes] if part.output_shapes else int(math.prod(part.output_shape))
    return {"kind": "emulation", "library": str(library), "project": project, "n_in": n_in, "n_out": n_out}


def overlay_backend(plan: Plan, name: str, bitfile: str, hwh: str, in_dtype: str = "float32",
                    out_dtype: str = "float32", io: str = "values") -> Dict[str, Any]:
    """Backend entry for a real PYNQ-Z2: the partition's bitstream and .hwh as the board sees them.
    io "raw": the accelerator moves the links' raw AXI-stream words (see harness/agent/agent_config.py)."""
    part = plan.partition(name)
    d = {"kind": "overlay", "bitfile": str(bitfile), "hwh": str(hwh), "n_in": incoming_elements(plan, name),
         "n_out": int(math.prod(part.output_shape)), "in_dtype": in_dtype, "out_dtype": out_dtype}
    if io != "values":
        d["io"] = io
    return d


def agent_config(plan: Plan, name: str, endpoints: Mapping[str, Endpoint], backend: Dict[str, Any], *,
                 listen_host: Optional[str] = None, listen_port: Optional[int] = None,
                 timing: Optional[Dict[str, Any]] = None, clock_skew_ns: int = 0, in_flight: int = 8,
                 log: Optional[str] = None, pidfile: Optional[str] = None,
                 faults: Optional[Dict[str, Any]] = None, secret_file: str = "agent.secret",
                 plan_hash: Optional[str] = None, records: Optional[Mapping[str, int]] = None) -> Dict[str, Any]:
    """The config of one partition's agent (`AgentConfig.to_dict()`). `endpoints` must hold the partition's
    next hops (not itself, unless listen_port is None: then it gives the port to listen on).
    listen_host: default the partition's endpoint host (the board's address on the data network), else
    127.0.0.1; never every interface unless asked for. plan_hash: plan.hash, when the caller has it (it hashes
    the whole plan: a deployment of N partitions asks once, not N times); records: records_out(plan), likewise.
    The agent's `endpoint` (what its handshakes are bound to) is its entry in `endpoints` when there is one."""
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
    if listen_host is None:
        listen_host = endpoints[name].host if name in endpoints else "127.0.0.1"
    board = endpoints[name].board if name in endpoints else ""
    endpoint = f"{endpoints[name].host}:{endpoints[name].port}" if name in endpoints else ""
    records = records if records is not None else records_out(plan)
    ids = partition_ids(plan)
    cfg = AgentConfig(
        board=board, partition=name, partition_id=ids[name], partition_ids=ids, stage=part.stage,
        plan_hash=plan_hash or plan.hash, listen={"host": listen_host, "port": int(listen_port)}, backend=backend,
        output_shape=list(part.output_shape), inputs=[c.to_dict() for c in plan.inputs_of(name)], outputs=outputs,
        timing=timing, clock_skew_ns=int(clock_skew_ns), in_flight=int(in_flight), log=log or "",
        pidfile=pidfile or "", faults=faults or None, secret_file=secret_file, endpoint=endpoint,
        records_in={c.src: records[c.src] for c in plan.inputs_of(name) if c.src != HOST})
    return cfg.to_dict()


def wire(plan: Plan, endpoints: Mapping[str, Endpoint], configs: Mapping[str, Dict[str, Any]],
         secret: Optional[bytes] = None, plan_hash: Optional[str] = None) -> Wiring:
    """The Wiring of a placed plan (configs as built by `agent_config`); `secret`: the deployment's secret,
    which the agents were given (the host needs it to talk to them); plan_hash: plan.hash, when the caller
    has it."""
    missing = [p for p in plan.partitions if p not in endpoints or p not in configs]
    if missing:
        raise WiringError(f"partition(s) {', '.join(missing)} have no board or no agent config: place every partition")
    return Wiring(
        plan_hash=plan_hash or plan.hash,
        endpoints={k: endpoints[k] for k in plan.partitions},
        configs={k: configs[k] for k in plan.partitions},
        partition_ids=partition_ids(plan),
        stages={p.name: p.stage for p in plan.ordered_partitions()},
        input_links=list(plan.input_links),
        output_links=list(plan.output_links),
        output_shape=_output_shape(plan),
        secret=secret,
        records=records_out(plan),
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
