"""Running a compiled hls4ml emulation library in a child process, so that a crash of its C++ code (an
abort, a segmentation fault) costs a one-line error instead of the verifying process.

    python -m splitting.emulation_guard LIBRARY PROJECT N_IN[,N_IN2...] N_OUT[,N_OUT2...] IN.npy OUT.npy
    python -m splitting.emulation_guard --trace LIBRARY PROJECT N_IN[,...] N_OUT[,...] IN.npy OUT.npy TRACE.npz LAYERS.json

(N_IN, N_OUT: the flat size of each input / output of the partition, comma-separated when it has several.)

The child imports only numpy and splitting.emulation (a fraction of a second); the batch goes through .npy
files in a private temporary folder. `--trace` runs a library compiled with hls4ml's TraceOutput and
collects every traced layer's output per frame, through the library's own trace interface
(allocate_trace_storage, collect_trace_output, free_trace_storage: what hls4ml's ModelGraph.trace calls).
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np

from .errors import UserError


class EmulationCrash(UserError):
    """The compiled emulation of a partition died or failed; the message names it."""


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _run_child(args, what: str, timeout: float, lib) -> None:
    try:
        r = subprocess.run([sys.executable, "-m", "splitting.emulation_guard", *args], capture_output=True, text=True,
                           timeout=timeout, cwd=str(Path(__file__).resolve().parents[1]))
    except subprocess.TimeoutExpired:
        raise EmulationCrash(f"the hls4ml emulation of {what or lib.project} did not finish in {timeout:.0f} s") from None
    if r.returncode != 0:
        how = (f"crashed ({_signal_name(r.returncode)})" if r.returncode < 0 else f"failed (exit {r.returncode})")
        last = [l for l in (r.stderr or "").strip().splitlines() if l.strip()]
        detail = f": {last[-1].strip()[:200]}" if last else ""
        raise EmulationCrash(f"the compiled hls4ml emulation of {what or lib.project} {how}{detail}; hls4ml 1.3 "
                             "cannot be trusted with this partition: cut its layers differently or leave them out")


def predict_isolated(lib, batch: np.ndarray, out_shape: Sequence[int] = (), what: str = "", timeout: float = 3600):
    """`lib.predict(batch, out_shape)` (lib: an emulation.EmulationLib) computed in a child process.
    EmulationCrash, naming `what` (e.g. 'partition s1 (layers sm, fl)'), when the child dies or fails."""
    batch = np.ascontiguousarray(np.asarray(batch, dtype=np.float64))
    with tempfile.TemporaryDirectory(prefix="splitrack-emu-") as tmp:
        fin, fout = Path(tmp) / "in.npy", Path(tmp) / "out.npy"
        np.save(fin, batch)
        _run_child([str(Path(lib.library).resolve()), lib.project, _sizes(lib.in_sizes), _sizes(lib.out_sizes), str(fin),
                    str(fout)], what, timeout, lib)
        if not fout.is_file():
            raise EmulationCrash(f"the compiled hls4ml emulation of {what or lib.project} wrote no result")
        out = np.load(fout)
    return out.reshape((len(batch),) + tuple(out_shape)) if out_shape else out


def trace_isolated(lib, batch: np.ndarray, layers: Sequence[dict], out_shape: Sequence[int] = (), what: str = "",
                   timeout: float = 3600) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """(outputs as predict_isolated gives them, {hls4ml layer name: its outputs (n, size) float64}) for the
    batch, from a library compiled with hls4ml's TraceOutput (`layers`: its hls.layer_records, those marked
    traced are collected), computed in a child process like predict_isolated (EmulationCrash when it dies)."""
    batch = np.ascontiguousarray(np.asarray(batch, dtype=np.float64))
    traced = [[r["name"], int(np.prod(r["shape"])), int(r.get("variables", 1))] for r in layers if r.get("traced")]
    with tempfile.TemporaryDirectory(prefix="splitrack-trace-") as tmp:
        fin, fout, ftr, flay = (Path(tmp) / f for f in ("in.npy", "out.npy", "trace.npz", "layers.json"))
        np.save(fin, batch)
        flay.write_text(json.dumps(traced))
        _run_child(["--trace", str(Path(lib.library).resolve()), lib.project, _sizes(lib.in_sizes), _sizes(lib.out_sizes), str(fin),
                    str(fout), str(ftr), str(flay)], what, timeout, lib)
        out = np.load(fout)
        with np.load(ftr) as z:
            trace = {k: z[k] for k in z.files}
    return (out.reshape((len(batch),) + tuple(out_shape)) if out_shape else out), trace


def _trace(lib, batch: np.ndarray, traced) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    import ctypes

    class TraceData(ctypes.Structure):
        _fields_ = [("name", ctypes.c_char_p), ("data", ctypes.c_void_p)]

    raw = lib._lib
    sizes = {name: size for name, size, _ in traced}
    slots = (TraceData * sum(n for _, _, n in traced))()
    raw.collect_trace_output.argtypes = [ctypes.POINTER(TraceData)]
    raw.collect_trace_output.restype = None
    raw.allocate_trace_storage.argtypes = [ctypes.c_size_t]
    raw.allocate_trace_storage.restype = None
    raw.free_trace_storage.restype = None
    out: Dict[str, list] = {name: [] for name in sizes}
    results = np.empty((len(batch), lib.n_out))
    raw.allocate_trace_storage(ctypes.sizeof(ctypes.c_double))
    try:
        for i, frame in enumerate(batch):
            results[i] = lib.run(frame)
            raw.collect_trace_output(slots)
            for slot in slots:
                if not slot.name:  # fewer outputs traced than slots offered
                    continue
                name = slot.name.decode()
                data = ctypes.cast(slot.data, ctypes.POINTER(ctypes.c_double))
                out[name].append(np.ctypeslib.as_array(data, shape=(sizes[name],)).copy())
    finally:
        raw.free_trace_storage()
    return results, {k: np.asarray(v) for k, v in out.items()}


def _sizes(sizes) -> str:
    return ",".join(map(str, sizes))


def _ints(arg: str):
    return [int(n) for n in arg.split(",")]


def _main(argv) -> int:
    from .emulation import EmulationLib

    if argv[0] == "--trace":
        library, project, n_in, n_out, fin, fout, ftrace, flay = argv[1:]
        lib = EmulationLib(library, project, _ints(n_in), _ints(n_out))
        results, trace = _trace(lib, np.load(fin), json.loads(Path(flay).read_text()))
        np.save(fout, results)
        np.savez(ftrace, **trace)
        return 0
    library, project, n_in, n_out, fin, fout = argv
    lib = EmulationLib(library, project, _ints(n_in), _ints(n_out))
    np.save(fout, lib.predict(np.load(fin)))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
