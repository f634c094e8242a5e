"""A remote command's output is read whole, though OpenSSH may send its exit status before the last of it.

OpenSSH's sshd sends `exit-status` when it reaps the command and forwards what is left in the command's pipe
after it; the channel's EOF marks the end of the output. On a loaded machine 1 `sha256sum` in 400 against a
stock sshd lost its last lines when the reading stopped at the exit status, and deploy took the unchanged
agent.json for a changed one (the CI failure of test_deploy_openssh). The channel below plays that order.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

from harness.rack.rackfile import Board
from harness.rack.ssh import Connection


class _Channel:
    """paramiko.Channel's reading side as the client sees OpenSSH: `early` bytes, then the exit status, then
    `late` bytes `lag` s later, then EOF (or no EOF: a background process holds the output)."""

    def __init__(self, early: bytes, late: bytes, lag: float = 0.05, eof: bool = True):
        self.status_event = threading.Event()
        self._buf, self._eof, self._cv = bytearray(early), False, threading.Condition()
        self._timeout = None
        self.closed = False

        def later():
            self.status_event.set()
            time.sleep(lag)
            with self._cv:
                self._buf += late
                self._eof = eof
                self._cv.notify_all()
        threading.Thread(target=later, daemon=True).start()

    def settimeout(self, t):
        self._timeout = t

    def exec_command(self, line):
        self.line = line

    def shutdown_write(self):
        pass

    def recv_ready(self):
        with self._cv:
            return bool(self._buf)

    def recv(self, n):
        import socket

        with self._cv:
            if not self._cv.wait_for(lambda: self._buf or self._eof, timeout=self._timeout):
                raise socket.timeout()
            data, self._buf[:] = bytes(self._buf[:n]), self._buf[n:]
            return data

    def recv_stderr_ready(self):
        return False

    def recv_exit_status(self):
        self.status_event.wait()
        return 0

    def close(self):
        self.closed = True


class _Client:
    def __init__(self, chan):
        self.chan = chan

    def get_transport(self):
        return self

    def open_session(self, timeout=None):
        return self.chan


def _conn(chan) -> Connection:
    c = Connection(Board(name="b", host="127.0.0.1", kind="pynq-z2", key=Path("/nonexistent"), user="u"))
    c._client = _Client(chan)
    return c


def test_output_after_the_exit_status_is_kept():
    lines = [f"{i:064x}  /w/part/f{i}" for i in range(20)]
    early, late = "\n".join(lines[:17]) + "\n", "\n".join(lines[17:]) + "\n"  # agent.json's line comes last
    res = _conn(_Channel(early.encode(), late.encode())).run(["sha256sum", "--", "x"], check=False)
    assert res.stdout.splitlines() == lines and res.status == 0


def test_a_background_start_returns_its_pid_line_without_waiting_for_eof():
    chan = _Channel(b"", b"4242\n", eof=False)  # the backgrounded list keeps the session's output open
    t0 = time.monotonic()
    pid = _conn(chan).start_background(["sleep", "100"], cwd="/w", output="out.txt")
    assert pid == 4242 and time.monotonic() - t0 < 2  # not the 5 s grace: the line is complete
    assert chan.closed
