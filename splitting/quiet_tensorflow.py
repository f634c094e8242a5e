"""TensorFlow and Keras start-up noise, silenced (the CLI's `-v` keeps it).

TensorFlow 2.21 writes its C++ start-up lines (oneDNN, "Could not find cuda drivers", CPU features) through
absl before any Python logging is configured, once for each of the two shared libraries it loads, so
`TF_CPP_MIN_LOG_LEVEL` does not reach them. They are written to file descriptor 2 while `import tensorflow`
runs; `quiet()` installs an import hook that points descriptor 2 at a temporary file for exactly that import
(the file is replayed on stderr when the import fails, so a broken install still explains itself).

Keras 3 warns "The structure of `inputs` doesn't match the expected structure" whenever a one-input
functional model is called with a list; splitrack's partitions are such models: the warning says nothing
to a user and is filtered.

Warnings that imported libraries raise (asyncssh under `cryptography` >= 43: "DSA is deprecated", five of
them at import) say nothing about the user's work either: `quiet()` sends every warning raised outside
splitrack's own packages to the log file `library_log_path()` instead of the terminal. splitrack's own
warnings still reach stderr.

What libraries print while splitrack runs them (hls4ml's converter notes such as "Keras v2 handler used for
layer ...", its compile and trace messages, C++ code of an emulation library writing to descriptor 1) goes
to the same log: every call into hls4ml runs inside `library_output()`, which points sys.stdout, sys.stderr
and descriptors 1 and 2 there for its duration. Without `quiet()` (the CLI's `-v`) it points them at
stderr instead: never at stdout, which holds what a command means (`--json`: one JSON document).
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import io
import logging
import os
import sys
import tempfile
import threading
import time
import warnings

KERAS_NOISE = r"The structure of `inputs` doesn't match the expected structure"
_OWN = tuple(os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep + pkg + os.sep
             for pkg in ("splitting", "harness"))
LOG_BYTES = 1 << 20  # the library log is rotated at 1 MiB (one old file kept): a bounded record, not an archive


def library_log_path():
    """The file that collects what imported libraries would have printed (cache folder/log/libraries.log)."""
    from .user_cache import cache_root

    return cache_root() / "log" / "libraries.log"


def _library_logger() -> logging.Logger:
    log = logging.getLogger("splitrack.libraries")
    if not log.handlers:
        log.propagate = False  # never reaches logging's last-resort handler (stderr)
        try:
            from logging.handlers import RotatingFileHandler

            path = library_log_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            handler = RotatingFileHandler(path, maxBytes=LOG_BYTES, backupCount=1, delay=True, encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s pid %(process)d: %(message)s"))
        except OSError:  # a read-only cache: the warnings are dropped, as quietly as before
            handler = logging.NullHandler()
        log.addHandler(handler)
    return log


class _LibraryWarnings:
    """warnings.showwarning: a warning raised in splitrack's own code is shown as usual; one raised in an
    imported library goes to the library log."""

    def __init__(self, shown):
        self.shown = shown

    def __call__(self, message, category, filename, lineno, file=None, line=None):
        if os.path.abspath(str(filename)).startswith(_OWN):
            return self.shown(message, category, filename, lineno, file, line)
        try:
            _library_logger().warning("%s:%s: %s: %s", filename, lineno, category.__name__, message)
        except Exception:  # the log must never turn a warning into an error
            pass


_quiet = False  # quiet() was called: library output goes to the log, else (-v) to stderr


def _log_descriptor() -> int:
    """A descriptor appending to the library log (rotated as the warnings' handler rotates it); -1 when the
    cache cannot be written."""
    path = library_log_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file() and path.stat().st_size > LOG_BYTES:
            os.replace(path, path.with_name(path.name + ".1"))
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError:
        return -1


def _output_target(what: str) -> int:
    """A new descriptor where library output goes: the library log after a line naming `what`, or stderr
    with -v (where nothing is parsed); /dev/null when the cache cannot be written (dropped, as quietly as
    the warnings are)."""
    target = _log_descriptor() if _quiet else os.dup(2)
    if target < 0:
        return os.open(os.devnull, os.O_WRONLY)
    if _quiet:
        os.write(target, f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}: {what}\n".encode())
    return target


def library_text(what: str, text: str) -> None:
    """Write `text` (e.g. a compiler's output) where library output goes (_output_target), never stdout."""
    fd = _output_target(what)
    try:
        os.write(fd, text.encode("utf-8", "replace"))
    finally:
        os.close(fd)


@contextlib.contextmanager
def library_output(what: str):
    """Run the body with whatever libraries print (Python's sys.stdout and sys.stderr, descriptors 1 and 2,
    and so the child processes it starts) sent to the library log after a line naming `what` (e.g.
    'hls4ml: converting partition s1'), or to stderr when quiet() was not called (the CLI's -v). Never to
    stdout. An exception raised in the body goes on unchanged."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    target = _output_target(what)
    saved = [os.dup(1), os.dup(2)]
    text = io.TextIOWrapper(io.FileIO(os.dup(target), "w"), encoding="utf-8", errors="replace", line_buffering=True)
    try:
        os.dup2(target, 1)
        os.dup2(target, 2)
        with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
            yield
    finally:
        with contextlib.suppress(Exception):
            text.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved + [target]:
            os.close(fd)
        text.close()


class _ThreadRouter(io.TextIOBase):
    """sys.stdout while thread_output is in use: what a registered thread prints goes to its own stream, what
    any other thread prints to the stream this replaced."""

    def __init__(self, base):
        self.base, self.routes = base, {}

    def write(self, s):
        return self.routes.get(threading.get_ident(), self.base).write(s)

    def flush(self):
        for stream in [self.base] + list(self.routes.values()):
            with contextlib.suppress(Exception):
                stream.flush()

    def __getattr__(self, name):  # encoding, fileno, isatty, ...: the replaced stream's
        return getattr(self.base, name)


_router_lock = threading.Lock()


@contextlib.contextmanager
def thread_output(what: str):
    """Run the body with what Python code prints to sys.stdout *in this thread* sent where library_output sends
    it (the library log, or stderr with -v), other threads' output untouched: for hls4ml's compile in a build
    thread, which prints g++'s whole log with print() when the build fails (child processes' output it
    captures itself). Never stdout, whatever the cache state: a --json command's stdout stays JSON."""
    text = io.TextIOWrapper(io.FileIO(_output_target(what), "w"), encoding="utf-8", errors="replace", line_buffering=True)
    me = threading.get_ident()
    with _router_lock:
        router = sys.stdout if isinstance(sys.stdout, _ThreadRouter) else _ThreadRouter(sys.stdout)
        router.routes[me] = text
        sys.stdout = router
    try:
        yield
    finally:
        with _router_lock:
            router.routes.pop(me, None)
            if not router.routes and sys.stdout is router:
                sys.stdout = router.base
        with contextlib.suppress(Exception):
            text.close()


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` through the ordinary finders and runs its import with descriptor 2 redirected."""

    def find_spec(self, name, path, target=None):
        # stays in place until the import has run: a library may ask importlib.util.find_spec("tensorflow")
        # (without importing it) first, and that spec is thrown away
        if name != "tensorflow":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        inner = spec.loader.exec_module

        def exec_module(module):
            if self in sys.meta_path:
                sys.meta_path.remove(self)  # the import runs now: later imports are plain
            sys.stderr.flush()
            saved = os.dup(2)
            with tempfile.TemporaryFile() as tmp:
                os.dup2(tmp.fileno(), 2)
                try:
                    inner(module)
                except BaseException:
                    os.dup2(saved, 2)
                    tmp.seek(0)
                    sys.stderr.write(tmp.read().decode(errors="replace"))
                    raise
                finally:
                    os.dup2(saved, 2)
                    os.close(saved)

        spec.loader.exec_module = exec_module
        return spec


def quiet() -> None:
    """Silence TensorFlow's and Keras' start-up noise in this process and in the Python processes it starts
    (through the environment), and send imported libraries' warnings, and what they print inside
    `library_output()`, to `library_log_path()`. Call before anything imports TensorFlow or asyncssh;
    harmless after."""
    global _quiet
    _quiet = True
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # keras' predict on partitions of different shapes triggers tf.function "retracing" warnings: noise here
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=KERAS_NOISE)
    if not isinstance(warnings.showwarning, _LibraryWarnings):
        warnings.showwarning = _LibraryWarnings(warnings.showwarning)
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())
