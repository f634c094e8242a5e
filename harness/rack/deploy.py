"""Deployment: bring every board of a rack to the state a plan needs (labgrid's "strategy" layer).

Per partition, on its board (one partition per board, as one bitstream per FPGA):

1. upload what the board must carry: the partition's artifact (a virtual board: the hls4ml emulation `.so`
   of `splitting.hls.project_dir`; a real PYNQ-Z2: bitstream + .hwh from `splitrack build`), the partition's
   contracts, the agent config, the deployment's secret (mode 0600), and the agent's package with the
   modules of `splitting` it imports, at their package paths (the one list is `harness.agent.files`);
2. verify every uploaded file's sha256 *on the board*; a file that arrives corrupted is uploaded once more,
   then the deployment stops with an error naming the board;
3. skip both the upload and the reprogramming when the board already carries the same files and its agent
   answers with the same plan and partition (pytest-embedded's "skip flashing when the image matches");
4. (re)start the agent (`python3 -m harness.agent part/agent.json` in the workdir; pidfile, log and stdout file
   beside its config). On a real board the agent programs
   the logic with `pynq.Overlay` when it starts, so a skipped restart is a skipped reprogramming.

Board layout, under the board's `workdir` (default ~/splitrack):

    harness/__init__.py  harness/agent/*.py (the agent's package: agent, wire, agent_config, backends, ...)
    splitting/__init__.py contract.py emulation.py op_kinds.py
    lease.json (who holds the board, harness.rack.lease)
    part/  artifact (lib .so [+ partition.fast.npz, libfastkernel.so: virtual boards] | .bit + .hwh),
           contracts.json, agent.json, agent.secret (0600),
           running.json (pid of the agent started with that agent.json), agent-<partition>.pid / .log / .out

`deploy()` returns a `Deployment`; its `wiring` (harness.rack.wiring) is what `harness.measure.stream` needs.
What a partition's board carries is harness/rack/artifacts.py's; starting and stopping its agent
harness/rack/agent_control.py's; the health check of a rack harness/rack/health.py's.
"""
from __future__ import annotations

import hashlib
import json
import posixpath
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from splitting.errors import UserError
from splitting.plan import Plan

from harness.agent import wire
from harness.agent.files import agent_files
from harness.rack import checks
from harness.rack import wiring as wiring_mod
from harness.rack.agent_control import (PART, agent_identity, agent_stale_state, board_identity, free_data_port,
                                        json_object, ping, remote_pids, start_agent, stop_agents, write_secret)
from harness.rack.artifacts import artifact
from harness.rack.health import agent_on_port, board_secret
from harness.rack.rackfile import Board, Rack
from harness.rack.ssh import CONNECT_TIMEOUT, BoardError, Connection, local_sha256

CODE = agent_files()  # path in the board's workdir -> local source: the agent's package and what it imports
MAX_PARALLEL = 32  # boards handled at once (threads waiting on SSH round trips and agent starts)


class DeployError(UserError, RuntimeError):
    """Deployment failed on one or more boards; `failures` lists (board, stage, message), `done` what worked."""

    def __init__(self, failures: List[BoardError], done: List["Placed"], before: str = ""):
        self.failures = failures
        self.done = done
        lines = [str(f) for f in failures]
        ok = ", ".join(f"{p.partition} on {p.board}" for p in done)
        super().__init__(before + "; ".join(lines) + (f" (deployed fine: {ok})" if ok else ""))


@dataclass
class Placed:
    """One partition on one board, as the deployment left it."""

    partition: str
    board: str
    host: str
    port: int
    flashed: bool  # artifact uploaded and logic (re)programmed in this deployment
    uploaded: List[str]  # board files written in this deployment
    restarted: bool  # agent (re)started
    pid: int
    seconds: float


@dataclass
class Deployment:
    """A plan deployed on boards: where each partition went and how (`placed`), the `wiring` a host streams
    through (harness.measure.stream), and `expected(x)`, the answers the boards must return, bit for bit (the
    plan's chained hls4ml emulation, run on this machine)."""

    plan_hash: str
    placed: Dict[str, Placed]  # partition -> where and how
    wiring: "wiring_mod.Wiring"
    boards: Dict[str, Board]  # partition -> board
    seconds: float = 0.0
    plan: Optional[Plan] = field(default=None, repr=False)

    @property
    def flashed(self) -> List[str]:
        """The partitions whose boards were (re)programmed by this deployment; the others already carried the
        same artifact."""
        return [p.partition for p in self.placed.values() if p.flashed]

    def expected(self, frames):
        """What the boards must answer for `frames`: the plan's partitions run one after another on this
        machine as their hls4ml emulation (the same libraries the virtual boards run, the C simulation of
        the logic on real boards), (n, values per frame) like harness.measure.stream.stream_outputs. Needs the
        deployed Plan."""
        import numpy as np

        from splitting.chain import emulation_runner, run_chain

        if self.plan is None:
            raise UserError("this Deployment was made without its Plan; deploy it with harness.rack.deploy.deploy")
        x = np.asarray(frames, dtype=np.float32)
        return run_chain(self.plan, x, emulation_runner(self.plan)).reshape(len(x), -1)


# --- placing a plan on a rack ------------------------------------------------------------------------
def _timing(plan: Plan, name: str, board: Board) -> Optional[dict]:
    if board.timing != "estimate":
        return None
    est = plan.partition(name).estimate or {}
    if "cycles" not in est:
        raise UserError(f"board {board.name} has timing = \"estimate\", but partition {name} has no cycle estimate; "
                        "make the plan with `splitrack plan`, or remove `timing` from the rack file")
    # the plan's hls4ml clock (PYNQ-Z2 default: 10 ns, 100 MHz)
    return {"cycles": float(est["cycles"]), "clock_mhz": 1000.0 / float(plan.hls_defaults.get("clock_period", 10))}


def place(plan: Plan, rack: Rack) -> Dict[str, Board]:
    """Partitions in plan order onto boards in rack order: one partition per board."""
    parts = plan.ordered_partitions()
    if rack.lab is not None:
        raise UserError(f"{rack.path} is a shared rack (labgrid coordinator {rack.lab.coordinator}): deploy alone "
                        "would leave agents on boards it does not hold; `splitrack run`, `bench`, `nightly` and "
                        "`pytest --boards` lease the boards for as long as they run")
    if len(parts) > len(rack.boards):
        raise UserError(f"plan has {len(parts)} partitions and the rack {len(rack.boards)} usable boards "
                        f"({', '.join(rack.names)}): add boards (`splitrack rack up --n-boards {len(parts)}`) "
                        "or split into fewer partitions")
    return {p.name: b for p, b in zip(parts, rack.boards)}


# --- one board -----------------------------------------------------------------------------------------
def _board_files(plan: Plan, name: str, art: Dict[str, Path], config: dict, sums: Dict[Path, str]):
    """What partition `name`'s board must hold, under its workdir: (files: path -> local file, blobs: path ->
    generated content, want: path -> sha256 of every one)."""
    p = plan.partition(name)
    contracts = {"partition": name, "stage": p.stage,
                 "inputs": [c.to_dict() for c in plan.inputs_of(name)],
                 "outputs": [c.to_dict() for c in plan.outputs_of(name)]}
    blobs = {  # generated files: content in memory
        f"{PART}/contracts.json": (json.dumps(contracts, indent=1, sort_keys=True) + "\n").encode(),
        f"{PART}/agent.json": (json.dumps(config, indent=1, sort_keys=True) + "\n").encode(),
    }
    files = dict(CODE)
    files.update({f"{PART}/{k}": v for k, v in art.items()})
    want = {rel: sums[src] for rel, src in files.items()}
    want.update({rel: hashlib.sha256(data).hexdigest() for rel, data in blobs.items()})
    return files, blobs, want


def _running_agent(conn: Connection, board: Board, name: str, plan_hash: str, secret: bytes, config_sum: str,
                   pids: Dict[str, int], ident: Tuple[bytes, bytes]):
    """(pid, stale state) of the agent that already runs this partition with exactly this config, or (None,
    None); asked with this deployment's secret (already written to the board), bound to the identity `ident` of
    this config's agent (agent_control.agent_identity). The agent that runs must be the
    one started with this config (running.json says which pid that was): a deployment that died between
    upload and restart leaves new files and the old agent."""
    root = conn.remote_path(board.workdir)
    started = json_object(conn.read_text(f"{root}/{PART}/running.json", stage="verify"))
    if not pids or started.get("config") != config_sum:
        return None, None
    try:
        h = ping(board.host, board.data_port, secret, ident=ident)
    except (OSError, ValueError):
        return None, None
    if (h.get("plan_hash"), h.get("partition"), h.get("pid")) != (plan_hash, name, started.get("pid")):
        return None, None
    return int(h["pid"]), agent_stale_state(h)


def _check_answers(board: Board, name: str, plan_hash: str, pid: int, secret: bytes,
                   ident: Tuple[bytes, bytes]) -> None:
    """The agent just started answers on the board's data port, as this partition of this plan (its handshake
    bound to `ident`); BoardError otherwise (the port unreachable from here, or another agent holding it)."""
    try:
        h = ping(board.host, board.data_port, secret, ident=ident)
    except (OSError, ValueError) as e:
        raise BoardError(board.name, "agent-ping", f"agent of {name} started (pid {pid}) but does not answer on "
                         f"{board.host}:{board.data_port} ({e}); is that port reachable from this machine?") from None
    if (h.get("partition"), h.get("plan_hash"), h.get("pid")) != (name, plan_hash, pid):
        raise BoardError(board.name, "agent-ping", f"{board.host}:{board.data_port} answers as partition "
                         f"{h.get('partition')!r} of plan {h.get('plan_hash')!r} (pid {h.get('pid')}), not {name!r} "
                         f"of plan {plan_hash!r} (pid {pid}): another agent holds the port")


def _deploy_one(plan: Plan, name: str, board: Board, art: Dict[str, Path], config: dict, force: bool,
                progress: Callable[[str], None], connect_timeout: float, secret: bytes, plan_hash: str,
                sums: Dict[Path, str]) -> Placed:
    """Deploy partition `name` onto `board`: `art` its artifact_files, `sums` the sha256 of every local
    file to upload (the agent's code and `art`), `plan_hash` the plan's hash (each computed once per
    deployment, not once per board)."""
    from . import lease

    t0 = time.monotonic()
    lease.require(board)  # never change a board another user may hold
    files, blobs, want = _board_files(plan, name, art, config, sums)
    with (lease.shared_connection(board) or Connection(board, timeout=connect_timeout)) as conn:
        root = conn.remote_path(board.workdir)
        conn.mkdirs(f"{root}/{PART}")
        if force:  # everything is uploaded again: what the board holds now does not matter (one command less)
            stale = list(want)
        else:
            have = conn.sha256([f"{root}/{rel}" for rel in want], stage="verify")
            stale = [rel for rel in want if have.get(f"{root}/{rel}") != want[rel]]
        pids = remote_pids(conn, f"{root}/{PART}")
        write_secret(conn, root, secret)  # a running agent reads it at each new connection: the ping below too
        ident = agent_identity(config)  # who the agent of this config proves to be (its plan, partition, endpoint)
        running, stale_state = (None, None) if stale else \
            _running_agent(conn, board, name, plan_hash, secret, want[f"{PART}/agent.json"], pids, ident)
        if running and not stale_state:
            progress(f"  {name} on {board.name}: board carries the same artifact and agent (pid {running}); "
                     "not uploaded, not reprogrammed")
            return Placed(name, board.name, board.host, board.data_port, False, [], False, running,
                          time.monotonic() - t0)
        # new files go to a staging name and are checked there while the old agent still runs: a failed
        # upload leaves the board as it was; only then is the old agent stopped and the files swapped in
        if stale:
            for folder in sorted({posixpath.dirname(rel) for rel in stale} - {"", PART}):  # the packages' folders
                conn.mkdirs(f"{root}/{folder}")
            _upload(conn, board, root, stale, files, blobs, want)
        stop_agents(conn, board, pids)
        free_data_port(conn, board, root, progress)  # an agent of another workdir (the rack file changed) may hold it
        for rel in stale:
            conn.rename(f"{root}/{rel}.upload", f"{root}/{rel}", stage="swap")
        # running.json names the agent that matches the files; until a new one is up, none does
        conn.remove(f"{root}/{PART}/running.json", stage="agent-start")
        pid = start_agent(conn, board, name, secret, ident)
        conn.put_bytes(json.dumps({"pid": pid, "config": want[f"{PART}/agent.json"]}).encode(),
                       f"{root}/{PART}/running.json", stage="agent-start")
        if stale_state:
            progress(f"  {name} on {board.name}: same artifact, but its agent held {stale_state}: restarted")
    _check_answers(board, name, plan_hash, pid, secret, ident)
    code = [r for r in stale if r in CODE]
    what = "uploaded " + ", ".join(sorted(Path(r).name for r in stale if r not in CODE)
                                   + ([f"the agent's code ({len(code)} files)"] if code else [])) if stale else "files unchanged"
    progress(f"  {name} on {board.name}: {what}; agent pid {pid} on port {board.data_port}")
    flashed = bool({f"{PART}/{k}" for k in art} & set(stale)) or force
    return Placed(name, board.name, board.host, board.data_port, flashed, sorted(stale), True, pid,
                  time.monotonic() - t0)


def _upload(conn: Connection, board: Board, root: str, rels: List[str], files: Dict[str, Path],
            blobs: Dict[str, bytes], want: Dict[str, str]) -> None:
    """Upload to the staging name `<file>.upload` and verify sha256 on the board; the caller renames them
    into place. One retry for files that arrive corrupted; then the staging files are removed."""
    todo = list(rels)
    for attempt in (1, 2):
        for rel in todo:
            tmp = f"{root}/{rel}.upload"
            if rel in blobs:
                conn.put_bytes(blobs[rel], tmp, stage="upload")
            else:
                conn.put(files[rel], tmp, stage="upload")
        got = conn.sha256([f"{root}/{rel}.upload" for rel in todo], stage="verify")
        bad = [rel for rel in todo if got.get(f"{root}/{rel}.upload") != want[rel]]
        if not bad:
            return
        todo = bad
    details = ", ".join(f"{rel} (expected {want[rel][:12]}, board has {str(got.get(f'{root}/{rel}.upload'))[:12]})"
                        for rel in bad[:2]) + (f" and {len(bad) - 2} more" if len(bad) > 2 else "")
    for rel in rels:
        conn.remove(f"{root}/{rel}.upload", stage="verify")
    raise BoardError(board.name, "verify", f"sha256 mismatch after upload, twice: {details}; "
                     "the board's storage or link corrupts data: check its SD card (its agent was left running)")


# --- the rack ------------------------------------------------------------------------------------------
def deploy(plan: Plan, rack: Rack, force: bool = False, progress: Callable[[str], None] = lambda s: None,
           faults: Optional[Dict[str, dict]] = None, part_timeout: Optional[float] = None,
           connect_timeout: float = CONNECT_TIMEOUT, lease_wait: float = 0.0) -> Deployment:
    """Deploy `plan` onto `rack` (partitions onto boards in order), in parallel over boards.

    The boards are leased for the deployment (harness.rack.lease), unless this process holds them already (a
    run or bench holds them for the whole job): a board another user holds raises LeaseHeld (after
    waiting up to `lease_wait` seconds), before anything on any board is changed.
    faults: partition -> agent fault-injection entry (tests only, see the agent's docstring).
    """
    from . import lease

    boards = place(plan, rack)
    # compile (or find and check cached) artifacts before taking the boards, in this thread: hls4ml must not
    # compile in parallel threads
    prepared = {name: artifact(plan, name, b) for name, b in boards.items()}
    with lease.ensure(list(boards.values()), "deploy", wait=lease_wait, progress=progress,
                      connect_timeout=connect_timeout) as held:
        _preflight(boards, prepared, connect_timeout, plan.hash)
        dep = _deploy(plan, boards, prepared, force, progress, faults, part_timeout, connect_timeout)
        if held is not None:
            held.check()
        return dep


def _preflight(boards: Dict[str, Board], prepared: Dict[str, tuple], connect_timeout: float, plan_hash: str) -> None:
    """The checks of harness.rack.checks on every board (numpy and pynq found, not imported), over the lease's
    connections, before anything is uploaded: DeployError naming every problem, nothing deployed. A board whose
    agent answers as this plan's partition is not checked again: that agent runs on the board's python, with
    numpy, under its sudo (a redeploy then costs a ping, not a Python start per board)."""
    from . import lease

    def connect(b: Board) -> Connection:
        lease.require(b)  # unreachable: the lease's own BoardError says why
        return lease.shared_connection(b) or Connection(b, timeout=connect_timeout)

    def runs_it(item) -> bool:
        name, b = item
        try:
            with connect(b) as conn:
                h = ping(b.host, b.data_port, board_secret(conn, b), ident=board_identity(conn, b))
        except (BoardError, OSError, ValueError):
            return False
        return (h.get("plan_hash"), h.get("partition")) == (plan_hash, name)

    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(boards))) as pool:
        todo = [b for (name, b), runs in zip(boards.items(), pool.map(runs_it, boards.items())) if not runs]
    needs = {b.name: checks.Need(name, checks.upload_bytes(list(CODE.values()) + list(prepared[name][0].values())))
             for name, b in boards.items()}
    reports = checks.inspect_boards(todo, needs, imports=False, port_owner=agent_on_port, connect=connect,
                                    timeout=connect_timeout)
    problems = [BoardError(p.board, p.check, p.message) for r in reports for p in r.problems]
    if problems:
        raise DeployError(problems, [], before="nothing deployed: ")


def _deploy(plan: Plan, boards: Dict[str, Board], prepared: Dict[str, tuple], force: bool,
            progress: Callable[[str], None], faults: Optional[Dict[str, dict]], part_timeout: Optional[float],
            connect_timeout: float) -> Deployment:
    """prepared: partition -> artifact(plan, partition, its board)."""
    t0 = time.monotonic()
    plan_hash = plan.hash  # hashes the whole plan: once, not per partition (64 boards: 64 x a 64-partition plan)
    progress(f"deploying plan {plan_hash} ({len(boards)} partitions) to {', '.join(b.name for b in boards.values())}")
    for name in boards:  # a virtual board's partition the fast model does not compute: why, in one line
        if prepared[name][1].get("note"):
            progress(f"  {name}: {prepared[name][1]['note']}")
    endpoints = {n: wiring_mod.Endpoint(b.name, b.host, b.data_port) for n, b in boards.items()}
    secret = wire.new_secret()  # one per deployment: every connection to its agents must prove it
    configs = {}
    for name, b in boards.items():
        cfg = wiring_mod.agent_config(plan, name, endpoints, prepared[name][1], timing=_timing(plan, name, b),
                                      faults=(faults or {}).get(name), plan_hash=plan_hash)
        if part_timeout is not None:
            cfg["part_timeout"] = part_timeout
        configs[name] = cfg
    wiring = wiring_mod.wire(plan, endpoints, configs, secret=secret, plan_hash=plan_hash)
    # every local file a board gets, hashed once (the agent's code is the same for every board)
    local = set(CODE.values()) | {f for files, _ in prepared.values() for f in files.values()}
    sums = {f: local_sha256(f) for f in local}
    placed: Dict[str, Placed] = {}
    failures: List[BoardError] = []
    # most of a board's deployment is waiting for it (SFTP round trips, the agent's start): many at once
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(boards))) as pool:
        futs = {name: pool.submit(_deploy_one, plan, name, b, prepared[name][0], configs[name], force, progress,
                                  connect_timeout, secret, plan_hash, sums)
                for name, b in boards.items()}
        for name, fut in futs.items():
            try:
                placed[name] = fut.result()
            except BoardError as e:
                failures.append(e)
            except UserError as e:
                failures.append(BoardError(boards[name].name, "prepare", str(e)))
    if failures:
        raise DeployError(failures, list(placed.values()))
    dep = Deployment(plan_hash, placed, wiring, boards, time.monotonic() - t0, plan=plan)
    if plan.root is not None:
        wiring.save(plan.root / wiring_mod.WIRING_FILE)
    return dep


def undeploy(rack: Rack, boards: Optional[List[str]] = None) -> int:
    """Stop the agents on the rack's boards (files stay, so the next deploy skips the upload)."""
    def stop(b: Board) -> int:
        lease.require(b)
        with (lease.shared_connection(b) or Connection(b)) as conn:
            return stop_agents(conn, b)

    from . import lease

    chosen = [b for b in rack.boards if boards is None or b.name in boards]
    if not chosen:
        return 0
    with lease.ensure(chosen, "undeploy"), ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(chosen))) as pool:
        return sum(pool.map(stop, chosen))
