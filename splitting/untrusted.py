"""Reading files nobody vouches for (a plan folder, cosim.json, a results file): bounded, never blocking.

A plan folder comes from anywhere (a colleague's share, a repository), and so do the JSON files `history add`
and `bench` read. Each read here:

- opens the file without following a last-component symlink and without blocking (O_NONBLOCK: a FIFO's
  open returns at once), then checks what it opened (fstat): a regular file, not a device (`/dev/zero`), a
  FIFO or a socket; at most `limit` bytes, read no further than that;
- with `inside`, refuses a path that leaves that folder once symlinks are resolved (a partition folder
  that is a link to somewhere else on the machine);
- parses JSON to at most `max_depth` levels of nesting (deeper nesting breaks recursive code downstream,
  and 100,000 levels break Python's own parser) and refuses text that is not UTF-8.

Every refusal is the caller's one-line error class (`error=`), naming the file and what to do.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, Optional, Type, Union

from .errors import UserError

MiB = 1 << 20
JSON_LIMIT = 64 * MiB  # a plan.json, cosim.json, run.json or bench.json (a 100,000-frame run.json is ~40 MiB)
MODEL_LIMIT = 1024 * MiB  # a .keras file: a model too large for one PYNQ-Z2 is still far below this
MAX_DEPTH = 64  # JSON nesting: splitrack's own files nest fewer than 10 levels


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def checked_path(path: Union[str, Path], limit: int, what: str = "", inside: Optional[Path] = None,
                 error: Type[Exception] = UserError) -> Path:
    """`path` resolved (symlinks followed), once checked: it exists, is a regular file of at most `limit`
    bytes, and (with `inside`) lies inside that folder after resolving. For libraries that want a path
    (Keras); `read_bytes` re-checks on the open file itself. Raises `error` with one line, FileNotFoundError
    for a missing file."""
    what = what or str(path)
    p = Path(path)
    try:
        real = p.resolve(strict=True)
    except FileNotFoundError:
        raise FileNotFoundError(str(p)) from None
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise error(f"{what}: cannot be resolved ({e})") from None
    st = os.stat(real)
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} is {_kind(st.st_mode)}, not a regular file: refused (give a file)")
    if inside is not None:
        root = Path(inside).resolve()
        if real != root and root not in real.parents:
            raise error(f"{what} leads to {real}, outside {root}: a plan folder's files must be inside it; "
                        "copy the file into the folder instead of linking to it")
    if st.st_size > limit:
        raise error(f"{what} is {st.st_size} bytes, more than the {limit} this file may have: refused")
    return real


def read_bytes(path: Union[str, Path], limit: int, what: str = "", inside: Optional[Path] = None,
               error: Type[Exception] = UserError) -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them (see checked_path). The file is opened
    with O_NONBLOCK and O_NOFOLLOW on its resolved path and checked again with fstat, so a FIFO, a device or
    a file swapped for a link after the check is refused without a blocking read. FileNotFoundError when it
    does not exist; `error` for every refusal."""
    what = what or str(path)
    real = checked_path(path, limit, what, inside, error)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as e:
        raise error(f"{what}: cannot be opened ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} is {_kind(st.st_mode)}, not a regular file: refused (give a file)")
        chunks, got = [], 0
        while got <= limit:
            b = os.read(fd, min(limit + 1 - got, 4 * MiB))
            if not b:
                break
            chunks.append(b)
            got += len(b)
        if got > limit:
            raise error(f"{what} grew beyond the {limit} bytes this file may have while it was read: refused")
        return b"".join(chunks)
    except OSError as e:
        raise error(f"{what}: cannot be read ({e.strerror or e})") from None
    finally:
        os.close(fd)


def json_depth(doc: Any, stop: int) -> int:
    """Nesting depth of a parsed JSON value (0 for a scalar), walked without recursion; stops counting once
    past `stop`."""
    deepest, todo = 0, [(doc, 1)]
    while todo:
        v, d = todo.pop()
        if isinstance(v, dict):
            v = v.values()
        elif not isinstance(v, list):
            continue
        deepest = max(deepest, d)
        if deepest > stop:
            break
        todo.extend((x, d + 1) for x in v)
    return deepest


def loads_json(data: Union[bytes, str], what: str, max_depth: int = MAX_DEPTH,
               error: Type[Exception] = UserError) -> Any:
    """JSON text (UTF-8 bytes or str) parsed, with at most `max_depth` levels of nesting. Raises `error`
    for text that is not UTF-8, not JSON, or nested deeper."""
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray, memoryview)) else data
        doc = json.loads(text)
    except UnicodeDecodeError as e:
        raise error(f"{what} is not UTF-8 text (byte {e.start}): not a file splitrack wrote") from None
    except json.JSONDecodeError as e:
        raise error(f"{what} is not valid JSON ({e.msg}, line {e.lineno})") from None
    except RecursionError:
        raise error(f"{what}: JSON nested more than {max_depth} levels deep: not a file splitrack wrote") from None
    if json_depth(doc, max_depth) > max_depth:
        raise error(f"{what}: JSON nested more than {max_depth} levels deep: not a file splitrack wrote")
    return doc


def read_json(path: Union[str, Path], what: str = "", limit: int = JSON_LIMIT, inside: Optional[Path] = None,
              max_depth: int = MAX_DEPTH, error: Type[Exception] = UserError) -> Any:
    """read_bytes then loads_json: a bounded, non-blocking, depth-limited JSON file. FileNotFoundError when
    the file does not exist; `error` for every refusal."""
    what = what or str(path)
    return loads_json(read_bytes(path, limit, what, inside, error), what, max_depth, error)
