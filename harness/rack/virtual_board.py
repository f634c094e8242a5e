"""A virtual PYNQ-Z2: a real SSH server (asyncssh) with its own home folder, address and port.

What a deployment needs from a board, and nothing else: public-key auth, SFTP (starting in the board's home
folder), and `exec` of commands, which run with `/bin/sh` in the home folder with HOME pointing there. The
board's "programmable logic" is whatever the agent loads (the hls4ml emulation library of its partition).

To make the board's limits testable, `free` and `df` on this board report the board's own memory and disk
(`--memory-mb`, `--disk-mb`), and SFTP refuses writes beyond the disk size with "No space left on device",
as a full SD card would. `sudo` runs its command as the board user (a prepared image's NOPASSWD entry for the
agent's commands). `--pynq-version V` makes the board carry the identity of a PYNQ V image: a `pynq`
package whose version is V (only that: no Overlay, virtual boards run the emulation). Faults (`--fault`,
FAULTS) make a board wrong on purpose, as boards in a lab are:

- corrupt-upload: flips one bit of every uploaded file (a flaky SD card or link), for deploy's sha256 check;
- no-numpy: the board's python3 has no numpy (it runs without site-packages);
- old-python: the board's python3 says it is Python 3.6.9 (`sys.version_info`, as PYNQ 2.6's image's did);
- sudo-refused: `sudo -n` asks for a password, as on an image without a sudoers entry for the agent. The board's wall clock
can be stepped while it runs (`set_clock`: files written from then on get modification times that far off, as
on a PYNQ-Z2 whose clock NTP corrects; its monotonic clock, /proc/uptime, does not move), and /proc hidden from
SFTP (a board whose uptime cannot be read).

Run one board per process (a board must be stoppable and freezable on its own):

    python -m harness.rack.virtual_board --name b0 --home DIR --port 2200 --host-key KEY --authorized-keys FILE
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import List, Optional

import asyncssh

FAULTS = ("corrupt-upload", "no-numpy", "old-python", "sudo-refused")
CLOCK_FILE = "clock.json"  # in the board's state folder: {"offset_s": wall-clock step, "hide_proc": bool}


def set_clock(home: Path, offset_s: float = 0.0, hide_proc: bool = False) -> None:
    """Step the wall clock of the running virtual board whose home is `home` to `offset_s` seconds off the
    host's (files it writes from now on carry that time), and hide /proc from its SFTP or not. For tests."""
    home = Path(home).resolve()
    f = home.parent / (home.name + ".board") / CLOCK_FILE
    tmp = f.with_suffix(".tmp")
    tmp.write_text(json.dumps({"offset_s": float(offset_s), "hide_proc": bool(hide_proc)}))
    os.replace(tmp, f)


def disk_usage(home: Path) -> int:
    """Bytes used under `home`: the sum of the files' sizes (lstat, symlinks not followed); unreadable
    files are skipped."""
    total = 0
    for root, dirs, files in os.walk(home):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


# `free` and `df` of the board: small scripts in the board's own bin folder, first on its PATH (-S: no
# site-packages to scan, so that they start in tens of ms, as the C programs of a real board do).
_FREE = """#!{python} -S
import json, sys
c = json.load(open({cfg!r}))
total = c["memory_mb"] << 20
avail = c["memory_free_mb"] << 20
div = 1 if "-b" in sys.argv else 1024
print("               total        used        free      shared  buff/cache   available")
print("Mem:   %12d%12d%12d%12d%12d%12d" % (total // div, (total - avail) // div, avail // div, 0, 0, avail // div))
print("Swap:  %12d%12d%12d" % (0, 0, 0))
"""

_DF = """#!{python} -S
import json, os
c = json.load(open({cfg!r}))
size = int(c["disk_mb"] * 1048576)
used = sum(os.lstat(os.path.join(r, f)).st_size for r, _, fs in os.walk(c["home"]) for f in fs)
print("Filesystem     1024-blocks      Used Available Capacity Mounted on")
print("virtual-sd     %11d %9d %9d %7d%% %s" % (size // 1024, used // 1024, max(0, size - used) // 1024,
      100 * used // size, c["home"]))
"""


_SUDO = """#!/bin/sh
# sudo of a virtual board: the board user may run the agent's commands without a password
while [ $# -gt 0 ]; do
  case "$1" in
    -n|-E|-H) shift ;;
    --) shift; break ;;
    -*) echo "sudo: this virtual board's sudo knows -n, -E and -H only, not $1" >&2; exit 1 ;;
    *) break ;;
  esac
done
exec "$@"
"""

_SUDO_REFUSED = """#!/bin/sh
# sudo of a virtual board with the fault sudo-refused: no sudoers entry lets the board user skip the password
echo "sudo: a password is required" >&2
exit 1
"""

# python3 of a board with a fault in its Python: the real interpreter (-S: without site-packages for
# no-numpy) running the command line as `python3` would, after changing what the fault changes
_PYTHON = """#!{python}{flags}
import os, runpy, sys
from collections import namedtuple

if {old!r}:
    sys.version_info = namedtuple("version_info", "major minor micro releaselevel serial")(3, 6, 9, "final", 0)
    sys.version = "3.6.9 (a virtual board with the fault old-python)"
args = sys.argv[1:]
if args[:1] in (["--version"], ["-V"]):
    print("Python %d.%d.%d" % tuple(sys.version_info[:3]))
elif len(args) >= 2 and args[0] == "-c":
    sys.argv = ["-c"] + args[2:]
    sys.path[0] = ""
    exec(compile(args[1], "<string>", "exec"), {{"__name__": "__main__", "__builtins__": __builtins__}})
elif len(args) >= 2 and args[0] == "-m":
    sys.argv = [args[1]] + args[2:]
    sys.path[0] = os.getcwd()
    runpy.run_module(args[1], run_name="__main__", alter_sys=True)
elif args and not args[0].startswith("-"):
    sys.argv = args
    sys.path[0] = os.path.dirname(os.path.abspath(args[0]))
    runpy.run_path(args[0], run_name="__main__")
else:
    sys.exit("python3 of this virtual board runs -c CODE, -m MODULE or a script, not " + " ".join(args))
"""

_PYNQ = '''"""Not PYNQ: the identity of the PYNQ image a virtual board plays (harness.rack.virtual_board). Its agent runs
the hls4ml emulation; there is no Overlay here."""
__version__ = {version!r}
'''


class BoardSFTP(asyncssh.SFTPServer):
    """SFTP starting in the board's home folder, with a disk size and an optional corruption fault."""

    board: "VirtualBoard"

    def __init__(self, chan, board: "VirtualBoard"):
        self.board = board
        self._sizes = {}
        self._paths = {}  # files open for writing -> their path: stamped with the board's clock when closed
        self._corrupted = set()
        # no chroot: SFTP and commands must see the same paths, as on a real board; the session starts
        # in the board's home folder because the board process runs there
        super().__init__(chan)

    def _clock(self) -> dict:
        try:
            with open(self.board.state / CLOCK_FILE) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def open(self, path, pflags, attrs):
        """Open a file as asyncssh does and remember its size in bytes (for the disk limit) and its path (for
        the board's clock). /proc is missing while the board's clock hides it."""
        if self._clock().get("hide_proc") and self.map_path(path).startswith(b"/proc/"):
            raise asyncssh.SFTPNoSuchFile("No such file")
        f = super().open(path, pflags, attrs)
        self._sizes[id(f)] = os.fstat(f.fileno()).st_size
        if pflags & asyncssh.FXF_WRITE:
            self._paths[id(f)] = self.map_path(path)
        return f

    def write(self, file_obj, offset, data):
        """Write `data` at `offset` unless it would take the home folder beyond `disk_mb` MiB; then raise
        asyncssh.SFTPNoSpaceOnFilesystem. With the corrupt-upload fault, the first byte written to each file
        has its lowest bit flipped."""
        b = self.board
        old = self._sizes.get(id(file_obj), 0)
        new = max(old, offset + len(data))
        if b.disk_mb is not None and disk_usage(b.home) + (new - old) > int(b.disk_mb * 1048576):
            raise asyncssh.SFTPNoSpaceOnFilesystem("No space left on device")
        if "corrupt-upload" in b.faults and id(file_obj) not in self._corrupted and data:
            self._corrupted.add(id(file_obj))
            data = bytes([data[0] ^ 0x01]) + data[1:]
        self._sizes[id(file_obj)] = new
        return super().write(file_obj, offset, data)

    def close(self, file_obj):
        """Forget the file's size and fault state, then close it."""
        self._sizes.pop(id(file_obj), None)
        self._corrupted.discard(id(file_obj))
        path = self._paths.pop(id(file_obj), None)
        result = super().close(file_obj)
        offset = float(self._clock().get("offset_s") or 0.0)
        if path is not None and offset:
            now = time.time() + offset  # the board's wall clock, stepped
            os.utime(path, (now, now))
        return result


class VirtualBoard:
    """One virtual board: an asyncssh server on host:port, its home folder, its memory (MiB) and disk
    (MiB, None = unlimited) as `free` and `df` report them, and its faults. serve() runs it."""

    def __init__(self, name: str, home: Path, host: str, port: int, host_key: Path, authorized_keys: Path,
                 memory_mb: int = 512, memory_free_mb: Optional[int] = None, disk_mb: Optional[float] = 2048,
                 faults: List[str] = (), pynq_version: Optional[str] = None):
        self.name = name
        self.home = Path(home).resolve()
        self.host = host
        self.port = port
        self.host_key = Path(host_key)
        self.authorized_keys = Path(authorized_keys)
        self.memory_mb = memory_mb
        self.memory_free_mb = memory_mb * 3 // 4 if memory_free_mb is None else memory_free_mb
        self.disk_mb = disk_mb
        self.faults = list(faults)
        self.pynq_version = pynq_version
        self.state = self.home.parent / (self.home.name + ".board")
        self.bin = self.state / "bin"
        self.site = self.state / "site"  # the PYNQ image's packages (PYTHONPATH), with --pynq-version

    def _prepare(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.bin.mkdir(parents=True, exist_ok=True)
        cfg = self.state / "board.json"
        cfg.write_text(json.dumps({"name": self.name, "home": str(self.home), "memory_mb": self.memory_mb,
                                   "memory_free_mb": self.memory_free_mb,
                                   "disk_mb": self.disk_mb if self.disk_mb is not None else 1 << 20}))
        scripts = {"free": _FREE.format(python=sys.executable, cfg=str(cfg)),
                   "df": _DF.format(python=sys.executable, cfg=str(cfg)),
                   "sudo": _SUDO_REFUSED if "sudo-refused" in self.faults else _SUDO}
        if {"no-numpy", "old-python"} & set(self.faults):
            scripts["python3"] = _PYTHON.format(python=sys.executable, flags=" -S" if "no-numpy" in self.faults else "",
                                                old="old-python" in self.faults)
        for name in ("free", "df", "sudo", "python3"):
            f = self.bin / name
            if name in scripts:
                f.write_text(scripts[name])
                f.chmod(0o755)
            elif f.exists():  # a fault of an earlier start of this board
                f.unlink()
        if self.pynq_version:
            (self.site / "pynq").mkdir(parents=True, exist_ok=True)
            (self.site / "pynq" / "__init__.py").write_text(_PYNQ.format(version=self.pynq_version))
            for old in self.site.glob("pynq-*.dist-info"):
                shutil.rmtree(old)
            meta = self.site / f"pynq-{self.pynq_version}.dist-info"
            meta.mkdir()
            (meta / "METADATA").write_text(f"Metadata-Version: 2.1\nName: pynq\nVersion: {self.pynq_version}\n")

    def env(self) -> dict:
        """The environment of commands run on the board: HOME its home, PATH with its `free`/`df` first and this
        interpreter's folder (its python3 has numpy), SPLITRACK_BOARD its name, numpy thread pools of 1."""
        # python3 on the board is this interpreter (it has numpy, as a PYNQ image does)
        path = [str(self.bin), str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin",
                "/usr/sbin", "/sbin"]
        env = {"HOME": str(self.home), "PATH": ":".join(path), "USER": "xilinx", "LANG": "C.UTF-8",
               "SPLITRACK_BOARD": self.name}
        if self.pynq_version:
            env["PYTHONPATH"] = str(self.site)
        for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[k] = "1"  # a Z2 has two small cores; do not let numpy spawn thread pools
        return env

    async def _exec(self, process: asyncssh.SSHServerProcess) -> None:
        cmd = process.command
        if not cmd:
            process.stderr.write("this virtual board runs commands, not interactive shells\n")
            process.exit(1)
            return
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", cmd, cwd=str(self.home), env=self.env(),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await proc.communicate()
        except asyncio.CancelledError:
            proc.kill()
            raise
        process.stdout.write(out.decode(errors="replace"))
        process.stderr.write(err.decode(errors="replace"))
        process.exit(proc.returncode if proc.returncode >= 0 else 128 - proc.returncode)

    async def serve(self) -> None:
        """Prepare the board's folders, serve SSH and SFTP until SIGTERM or SIGINT, then kill the processes the
        board started (see kill_home_processes)."""
        self._prepare()
        os.chdir(self.home)
        self._server = await asyncssh.listen(
            self.host, self.port,
            server_host_keys=[str(self.host_key)],
            authorized_client_keys=str(self.authorized_keys),
            process_factory=self._exec,
            sftp_factory=lambda chan: BoardSFTP(chan, self),
            allow_scp=False, password_auth=False, kbdint_auth=False,
        )
        print(f"virtual board {self.name} listening on {self.host}:{self.port}, home {self.home}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        self._server.close()
        killed = kill_home_processes(self.home)
        print(f"virtual board {self.name} stopped ({killed} board processes ended)", flush=True)


def home_processes(*homes) -> List[int]:
    """Processes whose working folder is inside any of these boards' homes (the ones the boards started),
    found with one scan of /proc."""
    roots = [str(Path(h).resolve()) for h in homes]
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            cwd = os.readlink(f"/proc/{d}/cwd")
        except OSError:
            continue
        if any(cwd == r or cwd.startswith(r + "/") for r in roots):
            pids.append(int(d))
    return pids


def kill_home_processes(home: Path) -> int:
    """SIGKILL every process working in `home` (see home_processes); returns how many there were."""
    pids = home_processes(home)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(pids)


def zygote(requests=None, replies=None) -> int:
    """`--zygote`: a start-up server for many boards (what `rack up` uses). It imports asyncssh once, then for
    each request line on stdin (JSON: {"argv": board options, "cwd": folder, "log": file}) forks one board
    process and answers its pid on stdout. A board is then its own process as before (own session, stoppable
    and freezable on its own), but does not pay Python's and asyncssh's start-up (about 0.3 CPU s) again: 64
    boards on 2 cores start in a fraction of the time. Stays single-threaded, so that forking is safe. Ends
    when stdin closes."""
    requests = requests or sys.stdin
    replies = replies or sys.stdout
    for line in requests:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the board
            code = 1
            try:
                os.setsid()
                os.chdir(req["cwd"])
                fd = os.open(req["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.close(fd)
                os.close(null)
                sys.stdin = open(0, closefd=False)
                sys.stdout = open(1, "w", closefd=False)
                sys.stderr = open(2, "w", closefd=False)
                code = main(req["argv"])
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        replies.write(f"{pid}\n")
        replies.flush()
    return 0


def main(argv=None) -> int:
    """Command line: one virtual board per process (options in the module docstring); returns 0 once
    stopped by SIGTERM or SIGINT. argparse exits with status 2 on bad options. `--zygote` alone: see zygote()."""
    if list(sys.argv[1:] if argv is None else argv) == ["--zygote"]:
        return zygote()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--home", required=True, type=Path)
    ap.add_argument("--listen", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host-key", required=True, type=Path)
    ap.add_argument("--authorized-keys", required=True, type=Path)
    ap.add_argument("--memory-mb", type=int, default=512, help="the board's RAM as `free` reports it (Z2: 512)")
    ap.add_argument("--memory-free-mb", type=int, default=None, help="available memory `free` reports")
    ap.add_argument("--disk-mb", type=float, default=2048, help="size of the board's disk (home folder)")
    ap.add_argument("--fault", action="append", default=[], choices=FAULTS, help="make the board wrong on "
                    "purpose (repeatable; see the module docstring)")
    ap.add_argument("--pynq-version", default=None, help="carry the identity of this PYNQ image (a `pynq` package "
                    "of that version, without Overlay)")
    a = ap.parse_args(argv)
    board = VirtualBoard(a.name, a.home, a.listen, a.port, a.host_key, a.authorized_keys, a.memory_mb,
                         a.memory_free_mb, a.disk_mb, a.fault, a.pynq_version)
    asyncio.run(board.serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
