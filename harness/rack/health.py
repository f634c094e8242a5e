"""The health check of a rack's boards: SSH reachable, the agent's runtime (python >= 3.8 with numpy), free memory
and disk, a running agent that answers; a power cycle for a bad board whose rack file says how."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List

from harness.rack.agent_control import PART, SECRET_FILE, alive, ping, remote_pids
from harness.rack.rackfile import Board, Rack
from harness.rack.ssh import BoardError, Connection
from splitting.errors import UserError

MIN_FREE_MEMORY = 64 << 20  # below this an agent with its frame queues does not fit next to the OS
MIN_FREE_DISK = 32 << 20
MIN_PYTHON = (3, 8)
MAX_PARALLEL = 32  # boards checked at once


@dataclass
class Health:
    """The health check of one board: ok, the reason it is quarantined when not, and details (e.g. free
    memory and disk)."""

    board: str
    ok: bool
    reason: str = ""
    details: Dict[str, object] = field(default_factory=dict)

    def line(self) -> str:
        """One line for reports: 'board: ok (details)' or 'board: QUARANTINED: reason (details)'."""
        d = ", ".join(f"{k} {v}" for k, v in self.details.items())
        return f"{self.board}: {'ok' if self.ok else 'QUARANTINED: ' + self.reason}" + (f" ({d})" if d else "")


def board_secret(conn: Connection, board: Board) -> bytes:
    """The secret of the deployment a board carries (part/agent.secret, read over SSH); b"" when none."""
    text = conn.read_text(conn.remote_path(f"{board.workdir}/{PART}/{SECRET_FILE}"), stage="health")
    return bytes.fromhex((text or "").strip())


def ping_board(board: Board, timeout: float = 5.0) -> dict:
    """The PONG of the agent on `board`, whoever deployed it: its secret is read over SSH first (the owner
    of the board's SSH key may ask its agent anything). Raises BoardError, OSError, ValueError."""
    with Connection(board, timeout=timeout) as conn:
        secret = board_secret(conn, board)
    return ping(board.host, board.data_port, secret)


def check_board(board: Board, timeout: float = 5.0) -> Health:
    """SSH reachable, the agent's runtime (python >= 3.8 with numpy) answers, enough free memory and disk,
    and a running agent answers a ping. Never raises: a bad board gets a reason."""
    d: Dict[str, object] = {}
    try:
        with Connection(board, timeout=timeout) as conn:
            r = conn.run([board.python, "-c", "import sys, numpy; print(sys.version_info[0], sys.version_info[1], "
                          "numpy.__version__)"], check=False, timeout=20, stage="health")
            if r.status != 0:
                return Health(board.name, False, f"`{board.python}` with numpy does not run: "
                              f"{(r.stderr or r.stdout).strip()[-200:]}", d)
            major, minor, npv = r.stdout.split()[:3]
            d["python"] = f"{major}.{minor}"
            if (int(major), int(minor)) < MIN_PYTHON:
                return Health(board.name, False, f"python {major}.{minor} is older than 3.8", d)
            free = conn.run(["free", "-b"], check=False, timeout=10, stage="health").stdout
            mem = [ln.split() for ln in free.splitlines() if ln.startswith("Mem:")]
            if mem:
                avail = int(mem[0][6] if len(mem[0]) > 6 else mem[0][3])
                d["free_memory_mib"] = avail >> 20
                if avail < MIN_FREE_MEMORY:
                    return Health(board.name, False, f"only {avail >> 20} MiB of memory available "
                                  f"(an agent needs {MIN_FREE_MEMORY >> 20} MiB): reboot the board", d)
            df = conn.run(["df", "-Pk", conn.home], check=False, timeout=10, stage="health").stdout.splitlines()
            if len(df) >= 2:
                avail_k = int(df[1].split()[3])
                d["free_disk_mib"] = avail_k >> 10
                if avail_k << 10 < MIN_FREE_DISK:
                    return Health(board.name, False, f"only {avail_k >> 10} MiB of disk free "
                                  f"(need {MIN_FREE_DISK >> 20} MiB): clean up the board's SD card", d)
            pids = remote_pids(conn, conn.remote_path(f"{board.workdir}/{PART}"))
            live = [p for p in pids.values() if alive(conn, p)]
            secret = board_secret(conn, board)
    except BoardError as e:
        return Health(board.name, False, f"{e.stage}: {str(e).split(': ', 1)[-1]}", d)
    if live:
        try:
            h = ping(board.host, board.data_port, secret)
            d["agent"] = f"{h.get('partition')} pid {h.get('pid')}"
        except (OSError, ValueError) as e:
            d["agent"] = f"pid {live[0]} does not answer ({e}); deploy restarts it"
    return Health(board.name, True, "", d)


def power_cycle(board: Board, wait: float = 180.0, timeout: float = 5.0) -> Health:
    """Run the board's power_cycle command (locally, as an argument list), then wait up to `wait` seconds
    for the board to pass the health check again. Returns the last health answer."""
    import subprocess

    if not board.power_cycle:
        raise UserError(f"board {board.name} has no power_cycle command in the rack file")
    try:
        r = subprocess.run(board.power_cycle, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Health(board.name, False, f"power-cycle: {board.power_cycle[0]} failed: {e}")
    if r.returncode != 0:
        return Health(board.name, False, f"power-cycle: `{' '.join(board.power_cycle)}` exited with "
                      f"{r.returncode}: {(r.stderr or r.stdout).strip()[-200:]}")
    deadline = time.monotonic() + wait
    while True:
        h = check_board(board, timeout)
        if h.ok or time.monotonic() > deadline:
            h.details["power_cycled"] = True
            if not h.ok:
                h.reason = f"still bad {wait:.0f} s after a power cycle: {h.reason}"
            return h
        time.sleep(2.0)


def check_rack(rack: Rack, timeout: float = 5.0, recover: bool = False, wait: float = 180.0) -> List[Health]:
    """Health of every board, in parallel. recover: power-cycle the bad boards that have a power_cycle
    command, and check them again."""
    def one(b: Board) -> Health:
        h = check_board(b, timeout)
        if not h.ok and recover and b.power_cycle:
            h = power_cycle(b, wait, timeout)
        return h

    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(rack.boards))) as pool:
        return list(pool.map(one, rack.boards))
