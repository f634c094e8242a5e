"""Talking to one board over SSH (paramiko): key auth, host-key checking, remote commands, SFTP.

labgrid's "driver" layer. Every failure becomes a `BoardError` that names the board and the stage
(connect, auth, host-key, command, upload, ...) and says what to do. Every network operation is bounded by
a timeout, so a board that stops answering ends in an error, never in a hang.

Remote commands are argument lists; each argument is quoted with `shlex.quote` before it reaches the
board's shell, and no command line is ever built from data any other way. Files, folders, renames and
removals go through SFTP calls (no shell at all). The only unquoted shell text is fixed syntax written in
this module (`cd ... &&`, the redirections and `&` of `start_background`).
"""
from __future__ import annotations

import hashlib
import os
import shlex
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Union

import paramiko

from splitting.errors import UserError

from harness.rack.rackfile import Board

CONNECT_TIMEOUT = 10.0  # TCP connect, SSH banner, key exchange and auth, each
COMMAND_TIMEOUT = 60.0
OUTPUT_GRACE = 5.0  # how long output may trail a command's exit status (it comes within milliseconds)
# every SFTP request (one 32 KiB write, a stat, a rename) must be answered within this; a board whose SSH
# server freezes mid-upload then fails in seconds with the stage named, not after the kernel gives up
SFTP_TIMEOUT = 10.0


class BoardError(UserError, RuntimeError):
    """Something went wrong on or with one board; `board` and `stage` say where."""

    def __init__(self, board: str, stage: str, message: str):
        self.board = board
        self.stage = stage
        super().__init__(f"board {board}, stage {stage}: {message}")


def _no_space(e: BaseException) -> bool:
    """Whether an SFTP failure is a full disk or quota (SFTP v3 has no code for it: the server's text says)."""
    text = str(e).lower()
    return "space" in text or "quota" in text or getattr(e, "errno", None) == 28


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
    """A finished board command: its argv, exit status, and stdout and stderr as text (undecodable bytes replaced)."""

    argv: List[str]
    status: int
    stdout: str
    stderr: str


_known_hosts_cache: dict = {}  # known_hosts path -> ((mtime ns, size, inode), parsed paramiko.HostKeys)
_known_hosts_lock = threading.Lock()


def _known_keys(path: Path, name: str) -> dict:
    """{key type: key} that the known_hosts file `path` holds for `name` ("host" or "[host]:port", hashed
    entries included), {} when the file does not exist. The file is parsed once per version of it (its
    mtime, size and inode) in this process, not once per connection: a rack's known_hosts has a line per
    board, so parsing it for every board's connection costs the square of the rack's size (paramiko checks
    every new line against those before it)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return {}
    sig = (st.st_mtime_ns, st.st_size, st.st_ino)
    with _known_hosts_lock:
        hit = _known_hosts_cache.get(str(path))
        if hit is None or hit[0] != sig:
            hit = (sig, paramiko.HostKeys(str(path)))
            _known_hosts_cache[str(path)] = hit
    keys = hit[1].lookup(name)
    return dict(keys) if keys else {}


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
        self._broken = False  # an SFTP request timed out: do not wait on this connection again
        self._owner = True  # False for a sibling: it shares another Connection's SSH transport

    def sibling(self) -> "Connection":
        """A second connection over this open one's SSH transport: its own SFTP channel and commands, no new
        key exchange or authentication (paramiko multiplexes channels on one transport, each thread-safe).
        Closing the sibling leaves the transport open. Raises BoardError (stage 'connect') when this
        connection is closed or its transport is down."""
        t = self._client.get_transport() if self._client is not None else None
        if t is None or not t.is_active() or self._broken:
            raise BoardError(self.board.name, "connect", "the board's SSH connection is closed; connect again")
        c = Connection(self.board, self.timeout)
        c._client, c._owner = self._client, False
        c._home = self._home  # the same user on the same board: its home is known (one request less)
        return c

    # --- connecting ------------------------------------------------------------------------------
    def open(self) -> "Connection":
        """Connect and authenticate with the board's key (connect, banner, key exchange and auth each bounded by
        `timeout` s; host key checked per `host_key_policy`); returns self. Raises BoardError with stage
        'auth', 'host-key' or 'connect' and what to do."""
        b = self.board
        key = _load_key(b)
        client = paramiko.SSHClient()
        name = b.host if b.port == 22 else f"[{b.host}]:{b.port}"  # how paramiko's connect() looks it up
        for ktype, hkey in _known_keys(b.known_hosts, name).items():
            client.get_host_keys().add(name, ktype, hkey)
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
        """Close SFTP and SSH (the transport abruptly when the board stopped answering; a sibling's transport
        stays open for its owner); a second call does nothing."""
        if self._broken and self._client is not None and self._owner:
            # a hung board: close the transport (no goodbye that would wait for an answer)
            try:
                self._client.get_transport().close()
            except Exception:
                pass
        if self._sftp is not None:
            try:
                self._sftp.close()
            except Exception:
                pass
            self._sftp = None
        if self._client is not None:
            if self._owner:
                self._client.close()
            self._client = None

    def __enter__(self) -> "Connection":
        return self.open() if self._client is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- commands --------------------------------------------------------------------------------
    def run(self, argv: Sequence[Union[str, Path, int]], timeout: float = COMMAND_TIMEOUT, check: bool = True,
            stage: str = "command", cwd: Optional[str] = None) -> Result:
        """Run a command on the board. `argv` is quoted argument by argument; cwd (quoted) is the folder."""
        assert self._client is not None, "open() first"
        line = quote(argv)
        if cwd is not None:
            line = f"cd {shlex.quote(str(cwd))} && {line}"
        return self._exec(line, [str(a) for a in argv], timeout, check, stage)

    def start_background(self, argv: Sequence[Union[str, Path, int]], cwd: str, output: str,
                         stage: str = "start", timeout: float = 20.0) -> int:
        """Start `argv` detached in `cwd`, stdout and stderr to the file `output` (truncated), stdin from
        /dev/null; returns its pid (the shell's `$!`). Every argument, the folder and the file name are
        quoted: the shell sees data only as quoted words."""
        assert self._client is not None, "open() first"
        line = (f"cd {shlex.quote(str(cwd))} && {quote(argv)} > {shlex.quote(str(output))} 2>&1 < /dev/null & "
                "echo $!")
        # the backgrounded list keeps the session's output open: its output is complete at the pid's line end
        res = self._exec(line, [str(a) for a in argv], timeout, True, stage, complete=lambda out: out.endswith(b"\n"))
        pid = res.stdout.strip().splitlines()[-1:] or [""]
        if not pid[0].isdigit():
            raise BoardError(self.board.name, stage, f"`{line}` did not report a process id: {res.stdout!r}")
        return int(pid[0])

    def _exec(self, line: str, argv: List[str], timeout: float, check: bool, stage: str,
              complete: Optional[Callable[[bytes], bool]] = None) -> Result:
        """Run `line`; its output is read until the channel's EOF (or until `complete(stdout)` holds, for a
        command that leaves a process holding the output), at most OUTPUT_GRACE s after the exit status."""
        b = self.board
        chan = None
        try:
            chan = self._client.get_transport().open_session(timeout=self.timeout)
            chan.settimeout(timeout)
            chan.exec_command(line)
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            deadline = time.monotonic() + timeout
            # First the exit status (EOF alone may never come: a command that leaves a process in the background
            # may keep the session's output open, e.g. bash's subshell for `cd D && X &`). Sleep on the status
            # event, waking every 50 ms to take in output (so that a long one never fills the channel's
            # window): with 64 boards' commands waiting at once on a busy CPU, waking every 5 ms to look was
            # a good part of what deploy cost this machine.
            while not chan.status_event.wait(min(0.05, max(0.0, deadline - time.monotonic()))):
                while chan.recv_ready():
                    out += chan.recv(65536)
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                if time.monotonic() > deadline:
                    raise BoardError(b.name, stage, f"`{line}` did not finish within {timeout:.0f} s")
            # OpenSSH's sshd sends the exit status when it reaps the command and may forward the rest of the
            # command's output after it (seen: 1 `sha256sum` in 400 on a loaded machine lost its last lines, so
            # deploy took an unchanged file for a changed one): read on until EOF
            end = min(deadline, time.monotonic() + OUTPUT_GRACE)
            while not (complete is not None and complete(bytes(out))):
                chan.settimeout(max(0.001, end - time.monotonic()))
                try:
                    data = chan.recv(65536)
                except socket.timeout:
                    break  # no EOF within the grace: a process of the command's still holds its output
                if not data:
                    break  # EOF: every byte of stdout is in
                out += data
            while chan.recv_stderr_ready():  # stderr's bytes came before the EOF too
                err += chan.recv_stderr(65536)
            status = chan.recv_exit_status()
            if status == -1:  # paramiko's value when the channel closed without an exit status
                raise BoardError(b.name, stage, f"connection closed while running `{line}`")
        except (paramiko.SSHException, socket.timeout, OSError, EOFError) as e:
            raise BoardError(b.name, stage, f"`{line}` failed: {e or type(e).__name__}; is the board still up?") from None
        finally:
            if chan is not None:
                chan.close()  # on every path: an open channel holds a session on the board
        res = Result(argv, status, out.decode(errors="replace"), err.decode(errors="replace"))
        if check and status != 0:
            detail = (res.stderr or res.stdout).strip().splitlines()
            raise BoardError(b.name, stage, f"`{line}` exited with status {status}: {' | '.join(detail[-3:]) or 'no output'}")
        return res

    # --- files -----------------------------------------------------------------------------------
    @property
    def sftp(self) -> paramiko.SFTPClient:
        """The connection's SFTP client, opened on first use (requests time out after SFTP_TIMEOUT s); raises
        BoardError (stage 'sftp') when the board offers none."""
        if self._sftp is None:
            try:
                self._sftp = self._client.open_sftp()
                self._sftp.get_channel().settimeout(SFTP_TIMEOUT)
            except (paramiko.SSHException, OSError) as e:
                raise BoardError(self.board.name, "sftp", f"cannot open SFTP: {e}; does the board's sshd offer sftp?") from None
        return self._sftp

    @property
    def home(self) -> str:
        """The user's home folder on the board (SFTP normalize of '.'), asked once; raises BoardError."""
        if self._home is None:
            try:
                self._home = self.sftp.normalize(".")
            except (IOError, paramiko.SSHException, socket.timeout, EOFError) as e:
                raise self._sftp_error("prepare", "finding the home folder", e) from None
        return self._home

    def remote_path(self, rel: str) -> str:
        """A board path: absolute as given; `~` or `~/x` in the user's home (expanded here, on the board's
        side: the board's home, not this machine's); anything else relative to the home."""
        rel = str(rel)
        if rel == "~" or rel.startswith("~/"):
            rel = rel[2:]
        elif rel.startswith("~"):
            raise BoardError(self.board.name, "prepare", f"path {rel!r}: `~user` is not supported; give the "
                             "folder relative to the home folder or absolute")
        if rel.startswith("/"):
            return rel
        home = self.home.rstrip("/")
        return f"{home}/{rel}".rstrip("/") if rel else home

    def _sftp_error(self, stage: str, what: str, e: BaseException) -> BoardError:
        """A BoardError for a failed SFTP request; a timeout says the board stopped answering."""
        if isinstance(e, (socket.timeout, TimeoutError)):
            self._broken = True
            return BoardError(self.board.name, stage, f"the board's SSH server stopped answering while {what} "
                              f"(no reply within {SFTP_TIMEOUT:.0f} s); the board is hung or overloaded: "
                              "power-cycle it and deploy again")
        if isinstance(e, EOFError) or (isinstance(e, paramiko.SSHException) and not str(e)):
            self._broken = True
            return BoardError(self.board.name, stage, f"the connection closed while {what}; is the board still up?")
        return BoardError(self.board.name, stage, f"{what} failed: {e or type(e).__name__}")

    def put(self, local: Path, remote: str, stage: str = "upload") -> None:
        # not paramiko's put(): it pipelines writes and reports a refused write (a full disk) only as a
        # size mismatch at the end; here every write's answer is checked, so the board's reason comes back.
        # No `with` on the remote file: after a timeout its close() would wait once more for the hung board.
        """Upload the local file `local` to the board path `remote` (replaced), every 32 KiB write checked.
        Raises BoardError (stage `stage`): no space left, a hung board (timeout), or another failure."""
        dst = None
        try:
            with open(local, "rb") as src:
                dst = self.sftp.open(remote, "wb")
                dst.set_pipelined(False)
                for chunk in iter(lambda: src.read(32768), b""):
                    dst.write(chunk)
            dst.close()
        except (socket.timeout, TimeoutError, EOFError, paramiko.SSHException) as e:
            raise self._sftp_error(stage, f"writing {remote}", e) from None
        except IOError as e:
            text = str(e)
            if dst is not None:
                try:
                    dst.close()
                except Exception:
                    pass
            if _no_space(e):
                raise BoardError(self.board.name, stage, f"no space left on the board while writing {remote} "
                                 f"({Path(local).stat().st_size} bytes); free space in its home folder") from None
            raise BoardError(self.board.name, stage, f"upload of {local} to {remote} failed: {text}") from None

    def put_bytes(self, data: bytes, remote: str, stage: str = "upload", mode: Optional[int] = None,
                  exclusive: bool = False) -> None:
        """Write `data` to the board file `remote`. mode: chmod before the data goes in (e.g. 0o600).
        exclusive: create it, failing with FileExistsError when it exists (O_EXCL: atomic on the board)."""
        # SFTP v3 has no "file exists" status: an exclusive create that finds the file fails with a plain
        # failure, and the file may be gone again when we look (its owner removed it meanwhile). Then the
        # create is tried again; a failure with no file behind it, three times, is a real one.
        for attempt in range(3 if exclusive else 1):
            f = None
            try:
                f = self.sftp.open(remote, "wbx" if exclusive else "wb")
                if mode is not None:
                    f.chmod(mode)
                f.write(data)
                f.close()
                return
            except (socket.timeout, TimeoutError, EOFError, paramiko.SSHException) as e:
                raise self._sftp_error(stage, f"writing {remote}", e) from None
            except IOError as e:
                if f is not None:  # created (it is ours), then the write failed: a full disk, a quota
                    try:
                        f.close()
                    except Exception:
                        pass
                    self.remove(remote, stage)  # never leave a half-written file (an empty lease) behind
                    if _no_space(e):
                        raise BoardError(self.board.name, stage, f"no space left on the board while writing {remote} "
                                         f"({len(data)} bytes); free space in its home folder") from None
                    raise BoardError(self.board.name, stage, f"writing {remote} failed: {e}") from None
                if exclusive and self.exists(remote, stage):
                    raise FileExistsError(remote) from None
                error = e
        if _no_space(error):
            raise BoardError(self.board.name, stage, f"no space left on the board for {remote}; free space in its "
                             "home folder") from None
        raise BoardError(self.board.name, stage, f"writing {remote} failed: {error}") from None

    def _lookup(self, fn, stage: str, what: str):
        """fn() (an SFTP request about one board path), or None when that path does not exist; BoardError
        for any other failure, naming `what` (e.g. "reading /x")."""
        try:
            return fn()
        except FileNotFoundError:
            return None
        except (socket.timeout, TimeoutError, EOFError, paramiko.SSHException) as e:
            raise self._sftp_error(stage, what, e) from None
        except IOError as e:
            if getattr(e, "errno", None) == 2:
                return None
            raise BoardError(self.board.name, stage, f"{what} failed: {e}") from None

    def read_text(self, remote: str, stage: str = "read") -> Optional[str]:
        """A board file's text, or None when it does not exist."""
        def read():
            with self.sftp.open(remote, "r") as f:
                return f.read().decode(errors="replace")
        return self._lookup(read, stage, f"reading {remote}")

    def size(self, remote: str, stage: str = "read") -> Optional[int]:
        """The size in bytes of the board file `remote` (one SFTP stat), or None when it does not exist;
        raises BoardError for any other failure."""
        st = self._lookup(lambda: self.sftp.stat(remote), stage, f"looking at {remote}")
        return None if st is None else int(st.st_size or 0)

    def exists(self, remote: str, stage: str = "read") -> bool:
        """True when the board path `remote` exists (SFTP stat); raises BoardError for any failure other than
        'no such file'."""
        return self._lookup(lambda: self.sftp.stat(remote), stage, f"looking at {remote}") is not None

    def sftp_call(self, stage: str, what: str, fn, *args):
        """One SFTP request (`fn(*args)`, e.g. self.sftp.posix_rename) with the board's errors as BoardError."""
        try:
            return fn(*args)
        except (socket.timeout, TimeoutError, EOFError, paramiko.SSHException) as e:
            raise self._sftp_error(stage, what, e) from None
        except IOError as e:
            raise BoardError(self.board.name, stage, f"{what} failed: {e}") from None

    def rename(self, src: str, dst: str, stage: str) -> None:
        """Rename on the board, replacing `dst` (POSIX rename: atomic)."""
        self.sftp_call(stage, f"renaming {src} to {dst}", self.sftp.posix_rename, src, dst)

    def remove(self, remote: str, stage: str) -> None:
        """Remove a board file; a missing one is fine."""
        try:
            self.sftp.remove(remote)
        except FileNotFoundError:
            pass
        except (socket.timeout, TimeoutError, EOFError, paramiko.SSHException) as e:
            raise self._sftp_error(stage, f"removing {remote}", e) from None
        except IOError as e:
            if getattr(e, "errno", None) != 2:
                raise BoardError(self.board.name, stage, f"removing {remote} failed: {e}") from None

    def mkdirs(self, remote: str, stage: str = "prepare") -> None:
        """mkdir -p over SFTP (no shell). The deepest folder that exists is looked for from the end of the
        path (a folder that exists costs one request, a new one under an existing folder three), not from
        its root: every deployment and lease asks for a folder that is there or one level short."""
        parts = [p for p in remote.split("/") if p]
        lead = "/" if remote.startswith("/") else ""
        paths = [lead + "/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        have = len(paths)
        while have > 0 and not self.exists(paths[have - 1], stage):
            have -= 1
        for path in paths[have:]:
            try:
                self.sftp.mkdir(path)
            except (socket.timeout, TimeoutError, EOFError, paramiko.SSHException) as e:
                raise self._sftp_error(stage, f"creating {path}", e) from None
            except IOError as e:
                if not self.exists(path, stage):  # made meanwhile by another deployment: fine
                    raise BoardError(self.board.name, stage, f"cannot create folder {path}: {e}") from None

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
    """SHA-256 hex digest (64 characters) of a local file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def connect(board: Board, timeout: float = CONNECT_TIMEOUT) -> Connection:
    """An open Connection to `board` (see Connection.open for the errors raised)."""
    return Connection(board, timeout).open()
