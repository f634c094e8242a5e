"""The health check of a rack's boards (every check of harness.rack.checks: SSH, the agent's Python with numpy and
pynq, sudo, free memory and disk, the data port free or held by our agent); a power cycle for a bad board whose
rack file says how."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from harness.rack import checks
from harness.rack.agent_control import (PART, SECRET_FILE, alive, board_identity, other_workdir_agent, ping,
                                        remote_pids)
from harness.rack.rackfile import Board, Rack
from harness.rack.ssh import Connection
from splitting.errors import UserError

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
    """The PONG of the agent on `board`, whoever deployed it: its secret and identity are read over SSH first
    (the owner of the board's SSH key may ask its agent anything). Raises BoardError, OSError, ValueError."""
    with Connection(board, timeout=timeout) as conn:
        secret = board_secret(conn, board)
        ident = board_identity(conn, board)
    return ping(board.host, board.data_port, secret, ident=ident)


def agent_on_port(conn: Connection, board: Board) -> Optional[str]:
    """Who holds the board's data port when it is an agent of this board's workdir (its deployment's secret
    is read over `conn`): 'agent of P (pid N)', or 'agent pid N (not answering)' while one of its pid files
    names a live process, or the agent of another workdir in this board user's home (free_data_port stops
    it); None when the holder is not ours."""
    try:
        h = ping(board.host, board.data_port, board_secret(conn, board), ident=board_identity(conn, board))
        return f"agent of {h.get('partition')} (pid {h.get('pid')})"
    except (OSError, ValueError):
        live = [p for p in remote_pids(conn, conn.remote_path(f"{board.workdir}/{PART}")).values()
                if alive(conn, p)]
        if live:
            return f"agent pid {live[0]} (not answering; deploy restarts it)"
    other = other_workdir_agent(conn, board)  # the rack file's workdir changed: deploy stops the old agent
    return f"agent of workdir {other[1]} (pid {other[0]}; deploy stops it unless that workdir is leased)" if other else None


def check_board(board: Board, timeout: float = 5.0) -> Health:
    """Every check of harness.rack.checks (SSH, the agent's Python with numpy and pynq, what the board is,
    sudo, free memory and disk, the data port: free or held by our agent). Never raises: a bad board gets a
    reason (each problem as 'check: what to do', joined by '; ')."""
    r = checks.inspect_board(board, port_owner=agent_on_port, timeout=timeout)
    return Health(board.name, r.ok, "; ".join(f"{p.check}: {p.message}" for p in r.problems),
                  {k: v for k, v in r.facts.items() if k != "ssh"})


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
