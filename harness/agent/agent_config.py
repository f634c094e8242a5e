"""The board agent's configuration: one dataclass, written by the host (`harness.rack.wiring.agent_config`) and
read by the agent (`AgentConfig.from_dict`), so the schema exists once.

Shipped to every board beside the agent: Python 3.8+, standard library only. On disk it is plain JSON
(`to_dict`); relative paths are relative to the config file's folder.
"""
from __future__ import annotations

import os

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional


class AgentConfigError(Exception):
    """A config file the agent cannot run with."""


BACKEND_KINDS = ("emulation", "fast", "overlay", "passthrough")


@dataclass
class AgentConfig:
    """What one partition's agent needs to run.

    board           board name, used in every error message
    partition       partition name
    partition_id    small integer naming the partition in timestamp records (0..65533)
    partition_ids   {name: int} of every partition of the plan (names the producers of incoming links)
    stage           stage index of the partition in the plan
    plan_hash       hash of the plan this agent belongs to (answered by ping)
    listen          {"host": address, "port": P}: the board's address on the data network (never every
                    interface by default); port 0: any free port (see the agent's ready line)
    backend         {"kind": "emulation", "library": "lib.so", "project": "myproject", "n_in": 64, "n_out": 10}
                        the partition's hls4ml emulation library (virtual boards; bit-accurate); optional
                        "note": why deploy gave it no fast model (reported in the agent's ping)
                    {"kind": "overlay", "bitfile": "p.bit", "hwh": "p.hwh", "n_in": 64, "n_out": 10,
                     "dma": "hier_0.axi_dma_0", "in_dtype": "float32", "out_dtype": "float32"}
                        a real PYNQ-Z2 (pynq.Overlay; *_dtype: the AXI data type of the accelerator wrapper);
                        "io": "values" (default: the buffers hold values or raw words of n_in / n_out elements,
                        converted from and to the links' bytes in one vectorised step each way) or "raw" (the
                        accelerator takes and gives the links' AXI-stream words exactly as on the wire: one link
                        in, one out, no select; buffers of the links' payload_bytes, *_dtype and n_* unused; the
                        agent receives a frame into the input DMA buffer and sends the output buffer as it is)
                    {"kind": "fast", "model": "partition.fast.npz", "check_frames": 4, + the emulation keys}
                        virtual boards: fast_model.py's vectorised bit-exact model, used only if it equals
                        the emulation library on the check frames at start (else the library runs)
                    {"kind": "passthrough", "decode": false}
                        transport tests only: the output is the assembled input (bytes forwarded unchanged
                        when "decode" is false and one link in and one out share an encoding)
    output_shape    the partition's output tensor shape (no batch axis)
    inputs          [Contract.to_dict(), ...]   incoming links; assembled in `index` order
    outputs         [{"contract": Contract.to_dict(), "to": {"host": h, "port": p} or "host"}, ...]
    secret_file     file holding the deployment's secret (hex, mode 0600): every connection must prove it
    endpoint        "host:port" where the host and other agents reach this agent (the wiring's endpoint), part
                    of the identity every handshake is bound to; "" = the listen host and the bound port
    records_in      {producer: timestamp records each frame from it carries} (the plan's paths into it): a
                    header announcing more is refused before any buffer grows; {} = a bound from the plan size
    timing          optional {"cycles": N, "clock_mhz": 100}: a frame's compute takes at least N / clock
    clock_skew_ns   virtual boards: added to every timestamp this agent reports
    in_flight       frames held in each internal queue (receive -> compute -> send)
    connect_timeout seconds to keep retrying a next hop that does not accept yet
    part_timeout    seconds a frame may wait for its other parts before it is reported lost
    auth_timeout    seconds a new connection has, in all, to prove the secret before it is closed
    max_connections authenticated connections served at once; more are closed after authentication
    max_pending     connections not yet authenticated at once; a new one beyond this closes the oldest (a
                    crowd of strangers can only push each other out, never keep the host from a slot)
    log, pidfile    default "agent-<partition>.log" / ".pid"
    faults          tests only: {"drop_frames": [frame numbers within a session]}
    """

    board: str
    partition: str
    stage: int
    inputs: List[Dict[str, Any]]
    outputs: List[Dict[str, Any]]
    output_shape: List[int]
    backend: Dict[str, Any]
    partition_id: int = 0
    partition_ids: Dict[str, int] = field(default_factory=dict)
    plan_hash: str = ""
    listen: Dict[str, Any] = field(default_factory=lambda: {"host": "127.0.0.1", "port": 0})
    secret_file: str = "agent.secret"
    endpoint: str = ""
    records_in: Dict[str, int] = field(default_factory=dict)
    timing: Optional[Dict[str, Any]] = None
    clock_skew_ns: int = 0
    in_flight: int = 8
    connect_timeout: float = 10.0
    part_timeout: float = 10.0
    auth_timeout: float = 5.0
    max_connections: int = 32
    max_pending: int = 16
    log: str = ""
    pidfile: str = ""
    faults: Optional[Dict[str, Any]] = None

    def __post_init__(self):
        if not self.log:
            self.log = "agent-%s.log" % self.partition
        if not self.pidfile:
            self.pidfile = "agent-%s.pid" % self.partition

    @classmethod
    def from_dict(cls, d):
        """Checked types; AgentConfigError names the bad field."""
        if not isinstance(d, dict):
            raise AgentConfigError("config is not a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise AgentConfigError("unknown config field(s) %s: see harness/agent/agent_config.py" % ", ".join(unknown))
        missing = [k for k in ("board", "partition", "stage", "inputs", "outputs", "output_shape", "backend")
                   if k not in d]
        if missing:
            raise AgentConfigError("config lacks %s: see harness/agent/agent_config.py" % ", ".join(missing))
        try:
            cfg = cls(**d)
            cfg.board, cfg.partition, cfg.plan_hash = str(cfg.board), str(cfg.partition), str(cfg.plan_hash)
            cfg.secret_file, cfg.log, cfg.pidfile = str(cfg.secret_file), str(cfg.log), str(cfg.pidfile)
            cfg.endpoint = str(cfg.endpoint)
            cfg.records_in = {str(k): _int(v, "records_in") for k, v in dict(cfg.records_in).items()}
            for k in ("stage", "partition_id", "clock_skew_ns", "in_flight", "max_connections", "max_pending"):
                setattr(cfg, k, _int(getattr(cfg, k), k))
            for k in ("connect_timeout", "part_timeout", "auth_timeout"):
                setattr(cfg, k, float(getattr(cfg, k)))
            cfg.partition_ids = {str(k): _int(v, "partition_ids") for k, v in dict(cfg.partition_ids).items()}
            cfg.output_shape = [_int(s, "output_shape") for s in cfg.output_shape]
            cfg.listen = {"host": str(cfg.listen["host"]), "port": _int(cfg.listen.get("port", 0), "listen.port")}
            if not isinstance(cfg.inputs, list) or not all(isinstance(c, dict) for c in cfg.inputs):
                raise AgentConfigError("inputs must be a list of contracts")
            if not isinstance(cfg.outputs, list) or not all(
                    isinstance(o, dict) and "contract" in o and _is_dest(o.get("to")) for o in cfg.outputs):
                raise AgentConfigError('outputs must be a list of {"contract": ..., "to": "host" or {host, port}}')
            if not isinstance(cfg.backend, dict) or cfg.backend.get("kind") not in BACKEND_KINDS:
                raise AgentConfigError("backend kind %r: use %s" % (
                    cfg.backend.get("kind") if isinstance(cfg.backend, dict) else cfg.backend,
                    ", ".join(BACKEND_KINDS)))
        except AgentConfigError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise AgentConfigError("config has a bad field (%s: %s): see harness/agent/agent_config.py"
                                   % (type(e).__name__, e))
        if cfg.in_flight < 1 or cfg.max_connections < 2 or cfg.max_pending < 1 or cfg.auth_timeout <= 0:
            raise AgentConfigError("in_flight >= 1, max_connections >= 2, max_pending >= 1 and auth_timeout > 0 "
                                   "are needed")
        if not cfg.inputs or not cfg.outputs:
            raise AgentConfigError("config needs at least one incoming and one outgoing link")
        return cfg

    def to_dict(self):
        """The configuration as a JSON-able dict (what config.json holds); `faults` left out when None."""
        d = asdict(self)
        if d["faults"] is None:
            del d["faults"]
        return d


def _int(v, name):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
        raise AgentConfigError("%s must be an integer, got %r" % (name, v))
    return int(v)


def _is_dest(to):
    return to == "host" or (isinstance(to, dict) and "host" in to and "port" in to)


def config_path(p, base):
    """A path of the agent's config (`~` expanded); relative ones are taken from the folder `base` of the
    config file."""
    p = os.path.expanduser(str(p))
    return p if os.path.isabs(p) else os.path.join(base, p)
