"""Agents as local processes, without SSH: the fast path for tests and benchmarks.

Each partition gets a folder laid out as a board's working folder would be (the agent's package and the modules
it ships with, at their package paths, `config.json`, the deployment's secret (mode 0600), log and pidfile) and
its own agent process, started there as on a board (`python -m harness.agent config.json`), listening on
127.0.0.1. Agents start in reverse stage order on port 0, so every agent's next hops are known
when its config is written. One secret per `start`, as deploy makes one per deployment.

    with LocalRack(tmpdir) as rack:
        wiring = rack.start(plan, backends="emulation")
        result = run_frames(wiring, x)
"""
from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from harness.agent import wire as wire_format
from harness.agent.files import MODULE, agent_files
from harness.rack.wiring import Endpoint, Wiring, agent_config, emulation_backend, wire, write_secret_file
from splitting.errors import UserError
from splitting.plan import Plan

SECRET_FILE = "agent.secret"


class LocalRackError(UserError):
    """An agent process that did not come up."""


@dataclass
class LocalAgent:
    """One agent started by LocalRack: its partition, folder (config, log, secret), process, endpoint and
    config (with the port it listens on)."""

    partition: str
    folder: Path
    proc: subprocess.Popen
    endpoint: Endpoint
    config: Dict[str, Any]

    @property
    def log(self) -> Path:
        """Path of the agent's log file (in its folder)."""
        return self.folder / self.config["log"]

    def log_tail(self, n: int = 20) -> str:
        """The last `n` lines of the agent's log, or '(no log)' when it cannot be read."""
        try:
            return "\n".join(self.log.read_text().splitlines()[-n:])
        except OSError:
            return "(no log)"


PerPartition = Union[None, Dict[str, Any], Mapping[str, Optional[Dict[str, Any]]]]


def _for(value: PerPartition, name: str, plan: Plan):
    """A per-partition option given once for all partitions, or as {partition: value}."""
    if isinstance(value, Mapping) and set(value) <= set(plan.partitions) and value:
        return value.get(name)
    return value


class LocalRack:
    """Board agents as local processes (no SSH): one folder per partition under `workdir` with the files a
    board would carry. start() launches them and returns the Wiring; stop() ends them. A context manager.

    code: the agent's files (path in the folder -> source file) and the module started as
    `python -m MODULE config.json` (default: this checkout's, harness.agent.files; a benchmark may run another
    checkout's agent beside it)."""

    def __init__(self, workdir: Path, python: str = sys.executable, host: str = "127.0.0.1",
                 env: Optional[Dict[str, str]] = None, code: Optional[Tuple[Dict[str, Path], str]] = None):
        self.workdir = Path(workdir)
        self.python = python
        self.host = host
        # e.g. PYTHONPATH of board-side modules (pynq); the agent's own packages come first from its folder
        # (`python -m` puts it at the front of sys.path)
        self.env = dict(os.environ, **(env or {}))
        self.files, self.module = code or (agent_files(), MODULE)
        self.agents: Dict[str, LocalAgent] = {}
        self.wiring: Optional[Wiring] = None
        self.secret: Optional[bytes] = None

    def __enter__(self) -> "LocalRack":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, plan: Plan, backends: Union[str, Mapping[str, Dict[str, Any]]] = "passthrough", *,
              timing: PerPartition = None, clock_skew_ns: Union[int, Mapping[str, int]] = 0, in_flight: int = 8,
              faults: PerPartition = None, ready_timeout: float = 30.0) -> Wiring:
        """Start one agent per partition; return the Wiring the host streams through.

        backends: "passthrough", "emulation" (the partition's hls4ml emulation library, built by
        `splitting.hls`), or {partition: backend dict}. timing / faults / clock_skew_ns: one value for all
        partitions or {partition: value}."""
        endpoints: Dict[str, Endpoint] = {}
        configs: Dict[str, Dict[str, Any]] = {}
        self.secret = wire_format.new_secret()
        for part in reversed(plan.ordered_partitions()):
            name = part.name
            backend = self._backend(plan, name, backends)
            skew = clock_skew_ns.get(name, 0) if isinstance(clock_skew_ns, Mapping) else clock_skew_ns
            cfg = agent_config(plan, name, endpoints, backend, listen_host=self.host, listen_port=0,
                               timing=_for(timing, name, plan), clock_skew_ns=skew, in_flight=in_flight,
                               faults=_for(faults, name, plan))
            cfg["board"] = f"local-{name}"
            agent = self._launch(name, cfg, ready_timeout)
            endpoints[name] = agent.endpoint
            configs[name] = agent.config
        self.wiring = wire(plan, endpoints, configs, secret=self.secret)
        return self.wiring

    def _backend(self, plan: Plan, name: str, backends) -> Dict[str, Any]:
        if backends == "passthrough":
            return {"kind": "passthrough"}
        if backends == "emulation":
            from splitting import hls  # the lead's module: builds (or finds in the cache) the library

            lib = hls.emulation(plan, name)
            return emulation_backend(plan, name, os.path.abspath(lib.library), lib.project)
        if isinstance(backends, Mapping) and name in backends:
            return dict(backends[name])
        raise LocalRackError(f"no backend for partition {name}: give 'passthrough', 'emulation' or a dict per partition")

    def _launch(self, name: str, cfg: Dict[str, Any], ready_timeout: float) -> LocalAgent:
        folder = self.workdir / name
        folder.mkdir(parents=True, exist_ok=True)
        for dst, src in self.files.items():
            (folder / dst).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, folder / dst)
        write_secret_file(folder / cfg.get("secret_file", SECRET_FILE), self.secret)
        cfg_path = folder / "config.json"
        cfg_path.write_text(json.dumps(cfg, indent=1))
        proc = subprocess.Popen([self.python, "-m", self.module, "config.json"], cwd=folder, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=self.env)
        line = _read_line(proc, ready_timeout)
        try:
            ready = json.loads(line)
            port = int(ready["port"])
        except (ValueError, KeyError, TypeError):
            try:
                proc.wait(timeout=2)  # it said nothing: it is probably exiting with its reason on stderr
            except subprocess.TimeoutExpired:
                pass
            err = proc.stderr.read().decode(errors="replace") if proc.poll() is not None else ""
            self._kill(proc)
            raise LocalRackError(f"agent of {name} did not come up: {err.strip() or line or 'no ready line'} "
                                 f"(log: {folder / cfg['log']})") from None
        cfg = dict(cfg, listen={"host": self.host, "port": port})
        ep = Endpoint(board=cfg["board"], host=self.host, port=port)
        agent = LocalAgent(name, folder, proc, ep, cfg)
        self.agents[name] = agent
        return agent

    def restart(self, name: str, ready_timeout: float = 30.0) -> LocalAgent:
        """Start a partition's agent again (same config and port), as a deployer does after a crash."""
        old = self.agents[name]
        self._kill(old.proc)
        cfg = old.config  # port fixed now: next hops and the host know it
        return self._launch(name, cfg, ready_timeout)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send a signal to one agent (fault tests: SIGKILL is a crash)."""
        proc = self.agents[name].proc
        if proc.poll() is None:
            proc.send_signal(sig)

    def stop(self, timeout: float = 5.0) -> Dict[str, Optional[int]]:
        """SIGTERM every agent, wait, SIGKILL what is left. Returns exit status per partition."""
        for a in self.agents.values():
            if a.proc.poll() is None:
                a.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes = {}
        for name, a in self.agents.items():
            try:
                codes[name] = a.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._kill(a.proc)
                codes[name] = None
            for s in (a.proc.stdout, a.proc.stderr):
                if s:
                    s.close()
        self.agents.clear()
        return codes

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    """The agent's ready line, or '' when it exits or stays silent for `timeout` seconds."""
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace").split("\n")[0].strip()
