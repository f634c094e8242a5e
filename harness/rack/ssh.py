"""Talking to one board over SSH (paramiko): key auth, host-key checking, remote commands, SFTP.

labgrid's "driver" layer. Every failure becomes a `BoardError` that names the board and the stage
(connect, auth, host-key, command, upload, ...) and says what to do. Every network operation is bounded by
a timeout, so a board that stops answering ends in an error, never in a hang.

Remote commands are argument lists; each argument is quoted with `shlex.quote` before it reaches the
board's shell. The only unquoted shell text is fixed syntax written in this code base (`&&`, redirections).
"""
from __future__ import annotations

import hashlib
import shlex
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Union

import paramiko

from splitting.errors import UserError

from harness.rack.rackfile import Board

CONNECT_TIMEOUT = 10.0  # TCP connect, SSH banner, key exchange and auth, each
COMMAND_TIMEOUT = 60.0


class BoardError(UserError, RuntimeError):
    """Something went wrong on or with one board; `board` and `stage` say where."""

    def __init__(self, board: str, stage: str, message: str):
        self.board = board
        self.stage = stage
        super().__init__(f"board {board}, stage {stage}: {message}")


def quote(argv: Sequence[Union[str, Path, int]]) -> str:
    """An argument list as one shell command line, every argument quoted."""
    return " ".join(shlex.quote(str(a)) for a in argv)


class _TrustOnFirstUse(paramiko.MissingHostKeyPolicy):
    """Accept an unknown host's key once and record it in the known_hosts file.

    Only used when the rack file says host_key_policy = "trust-on-first-use". A host whose key *changed*
    is still refused (paramiko raises BadHostKeyException before asking a policy).
    """

    def __init__(self, known_hosts: Path):
        self.known_hosts = known_hosts

    def missing_host_key(self, client, hostname, key):
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        with open(self.known_hosts, "a") as f:
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)


@dataclass
class Result:
    argv: List[str]
    status: int
    stdout: str
    stderr: str


def _load_key(board: Board) -> paramiko.PKey:
    try:
        return paramiko.PKey.from_path(str(board.key))
    except FileNotFoundError:
        raise BoardError(board.name, "auth", f"key file {board.key} not found; fix `key` in the rack file") from None
    except paramiko.PasswordRequiredException:
        raise BoardError(
            board.name, "auth",
            f"key {board.key} is protected by a passphrase; load it into ssh-agent or use a key without one",
        ) from None
    except (paramiko.SSHException, ValueError) as e:
        raise BoardError(board.name, "auth", f"cannot read key {board.key}: {e}") from None


class Connection:
    """An open SSH connection to one board. Use as a context manager."""

    def __init__(self, board: Board, timeout: float = CONNECT_TIMEOUT):
        self.board = board
        self.timeout = timeout
        self._client: Optional[paramiko.SSHClient] = None
        self._sftp: Optional[paramiko.SFTPClient] = None
        self._home: Optional[str] = None

    # --- connecting ------------------------------------------------------------------------------
    def open(self) -> "Connection":
        b = self.board
        key = _load_key(b)
        client = paramiko.SSHClient()
        if b.known_hosts.is_file():
            client.load_host_keys(str(b.known_hosts))
        if b.host_key_policy == "trust-on-first-use":
            client.set_missing_host_key_policy(_TrustOnFirstUse(b.known_hosts))
        else:
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            # socket first, so that the TCP connect has its own bounded timeout and a clear message
            sock = socket.create_connection((b.host, b.port), timeout=self.timeout)
        except socket.timeout:
            raise BoardError(b.name, "connect", f"{b.host}:{b.port} did not answer within {self.timeout:.0f} s; "
                             "is the board powered and on the network?") from None
        except OSError as e:
            raise BoardError(b.name, "connect", f"cannot reach {b.host}:{b.port} ({e.strerror or e}); "
                             "is the board powered, and is sshd running on that port?") from None
        try:
            # a hung board accepts TCP (the kernel does) but never sends its SSH banner: say so plainly
            sock.settimeout(self.timeout)
            if not sock.recv(4, socket.MSG_PEEK):
                sock.close()
                raise BoardError(b.name, "connect", f"{b.host}:{b.port} closed the connection before SSH started; "
                                 "is sshd healthy on the board?")
        except (socket.timeout, TimeoutError):
            sock.close()
            raise BoardError(b.name, "connect", f"{b.host}:{b.port} accepted the connection but did not speak SSH "
                             f"within {self.timeout:.0f} s; the board is hung: power-cycle it") from None
        except OSError as e:
            sock.close()
            raise BoardError(b.name, "connect", f"{b.host}:{b.port} dropped the connection ({e})") from None
        try:
            client.connect(
                b.host, port=b.port, username=b.user, pkey=key, sock=sock,
                timeout=self.timeout, banner_timeout=self.timeout, auth_timeout=self.timeout,
                channel_timeout=self.timeout, allow_agent=False, look_for_keys=False,
            )
        except paramiko.BadHostKeyException as e:
            client.close()  # the transport first: closing its socket under it makes it log noise
            sock.close()
            raise BoardError(b.name, "host-key", f"the host key of {b.host}:{b.port} changed (now {e.key.get_name()} "
                             f"{e.key.get_fingerprint().hex()}); if the board was re-imaged, remove its line from "
                             f"{b.known_hosts} and connect again") from None
        except paramiko.SSHException as e:
            client.close()  # the transport first: closing its socket under it makes it log noise
            sock.close()
            msg = str(e)
            if "not found in known_hosts" in msg:
                raise BoardError(b.name, "host-key", f"{b.host}:{b.port} is not in {b.known_hosts}; add its key "
                                 f"(ssh-keyscan -p {b.port} {b.host} >> {b.known_hosts}) or set "
                                 "host_key_policy = \"trust-on-first-use\" for the first connection") from None
            if isinstance(e, paramiko.AuthenticationException):
                raise BoardError(b.name, "auth", f"{b.user}@{b.host}:{b.port} refused key {b.key}; add its public "
                                 f"key to ~{b.user}/.ssh/authorized_keys on the board") from None
            if "banner" in msg.lower() or "timed out" in msg.lower() or isinstance(e, socket.timeout):
                raise BoardError(b.name, "connect", f"{b.host}:{b.port} accepted the connection but did not "
                                 f"speak SSH within {self.timeout:.0f} s ({msg}); the board is hung: power-cycle it") from None
            raise BoardError(b.name, "connect", f"SSH to {b.host}:{b.port} failed: {msg}") from None
        except (socket.timeout, TimeoutError):
            client.close()  # the transport first: closing its socket under it makes it log noise
            sock.close()
            raise BoardError(b.name, "connect", f"{b.host}:{b.port} stopped answering during the SSH handshake "
                             f"(>{self.timeout:.0f} s); the board is hung: power-cycle it") from None
        except OSError as e:
            client.close()  # the transport first: closing its socket under it makes it log noise
            sock.close()
            raise BoardError(b.name, "connect", f"SSH to {b.host}:{b.port} failed: {e}") from None
        transport = client.get_transport()
        transport.set_keepalive(5)
        self._client = client
        return self

    def close(self) -> None:
        if self._sftp is not None:
            try:
                self._sftp.close()
            except Exception:
                pass
            self._sftp = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> "Connection":
        return self.open() if self._client is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- commands --------------------------------------------------------------------------------
    def run(self, argv: Sequence[Union[str, Path, int]], timeout: float = COMMAND_TIMEOUT, check: bool = True,
            stage: str = "command", shell_suffix: str = "", cwd: Optional[str] = None) -> Result:
        """Run a command on the board. `argv` is quoted argument by argument.

        shell_suffix: fixed shell syntax from this code base appended after the quoted command (for
        redirections); never user input.
        cwd: folder to run in (quoted).
        """
        assert self._client is not None, "open() first"
        line = quote(argv)
        if cwd is not None:
            line = f"cd {shlex.quote(str(cwd))} && {line}"
        if shell_suffix:
            line = f"{line} {shell_suffix}"
        return self._exec(line, [str(a) for a in argv], timeout, check, stage)

    def _exec(self, line: str, argv: List[str], timeout: float, check: bool, stage: str) -> Result:
        b = self.board
        try:
            chan = self._client.get_transport().open_session(timeout=self.timeout)
            chan.settimeout(timeout)
            chan.exec_command(line)
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            deadline = time.monotonic() + timeout
            while True:
                if chan.recv_ready():
                    out += chan.recv(65536)
                    continue
                if chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                    continue
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                if time.monotonic() > deadline:
                    chan.close()
                    raise BoardError(b.name, stage, f"`{line}` did not finish within {timeout:.0f} s")
                if chan.closed and not chan.exit_status_ready():
                    raise BoardError(b.name, stage, f"connection closed while running `{line}`")
                time.sleep(0.005)
            status = chan.recv_exit_status()
            chan.close()
        except (paramiko.SSHException, socket.timeout, OSError, EOFError) as e:
            raise BoardError(b.name, stage, f"`{line}` failed: {e or type(e).__name__}; is the board still up?") from None
        res = Result(argv, status, out.decode(errors="replace"), err.decode(errors="replace"))
        if check and status != 0:
            detail = (res.stderr or res.stdout).strip().splitlines()
            raise BoardError(b.name, stage, f"`{line}` exited with status {status}: {' | '.join(detail[-3:]) or 'no output'}")
        return res

    # --- files -----------------------------------------------------------------------------------
    @property
    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            try:
                self._sftp = self._client.open_sftp()
                self._sftp.get_channel().settimeout(COMMAND_TIMEOUT)
            except (paramiko.SSHException, OSError) as e:
                raise BoardError(self.board.name, "sftp", f"cannot open SFTP: {e}; does the board's sshd offer sftp?") from None
        return self._sftp

    @property
    def home(self) -> str:
        if self._home is None:
            self._home = self.sftp.normalize(".")
        return self._home

    def remote_path(self, rel: str) -> str:
        """A board path: absolute as given, or relative to the user's home."""
        return rel if rel.startswith("/") else f"{self.home.rstrip('/')}/{rel}"

    def put(self, local: Path, remote: str, stage: str = "upload") -> None:
        try:
            # not paramiko's put(): it pipelines writes and reports a refused write (a full disk) only as a
            # size mismatch at the end; here every write's answer is checked, so the board's reason comes back
            with open(local, "rb") as src, self.sftp.open(remote, "wb") as dst:
                dst.set_pipelined(False)
                for chunk in iter(lambda: src.read(32768), b""):
                    dst.write(chunk)
        except IOError as e:
            text = str(e)
            if "space" in text.lower() or "quota" in text.lower() or getattr(e, "errno", None) == 28:
                raise BoardError(self.board.name, stage, f"no space left on the board while writing {remote} "
                                 f"({Path(local).stat().st_size} bytes); free space in its home folder") from None
            raise BoardError(self.board.name, stage, f"upload of {local} to {remote} failed: {text}") from None
        except (paramiko.SSHException, socket.timeout, EOFError) as e:
            raise BoardError(self.board.name, stage, f"upload of {local} to {remote} failed: {e}") from None

    def put_bytes(self, data: bytes, remote: str, stage: str = "upload") -> None:
        try:
            with self.sftp.open(remote, "wb") as f:
                f.write(data)
        except IOError as e:
            raise BoardError(self.board.name, stage, f"writing {remote} failed: {e}") from None
        except (paramiko.SSHException, socket.timeout, EOFError) as e:
            raise BoardError(self.board.name, stage, f"writing {remote} failed: {e}") from None

    def read_text(self, remote: str, stage: str = "read") -> Optional[str]:
        """A board file's text, or None when it does not exist."""
        try:
            with self.sftp.open(remote, "r") as f:
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return None
        except IOError as e:
            if getattr(e, "errno", None) == 2:
                return None
            raise BoardError(self.board.name, stage, f"reading {remote} failed: {e}") from None
        except (paramiko.SSHException, socket.timeout, EOFError) as e:
            raise BoardError(self.board.name, stage, f"reading {remote} failed: {e}") from None

    def mkdirs(self, remote: str) -> None:
        self.run(["mkdir", "-p", remote], timeout=20, stage="prepare")

    def sha256(self, remotes: Iterable[str], stage: str = "verify") -> dict:
        """{path: sha256} of board files, computed on the board; missing files are absent from the answer."""
        remotes = list(remotes)
        if not remotes:
            return {}
        res = self.run(["sha256sum", "--", *remotes], timeout=60, check=False, stage=stage)
        sums = {}
        for line in res.stdout.splitlines():
            parts = line.split(None, 1)
            if len(parts) == 2 and len(parts[0]) == 64:
                sums[parts[1].lstrip("*")] = parts[0]
        return sums


def local_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def connect(board: Board, timeout: float = CONNECT_TIMEOUT) -> Connection:
    return Connection(board, timeout).open()
