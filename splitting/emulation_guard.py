"""Running a compiled hls4ml emulation library in a child process, so that a crash of its C++ code (an
abort, a segmentation fault) costs a one-line error instead of the verifying process.

    python -m splitting.emulation_guard LIBRARY PROJECT N_IN[,N_IN2...] N_OUT[,N_OUT2...] IN.npy OUT.npy

The child imports only numpy and splitting.emulation (a fraction of a second); the batch goes through .npy
files in a private temporary folder.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import UserError


class EmulationCrash(UserError):
    """The compiled emulation of a partition died or failed; the message names it."""


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def predict_isolated(lib, batch: np.ndarray, out_shape: Sequence[int] = (), what: str = "", timeout: float = 3600):
    """`lib.predict(batch, out_shape)` (lib: an emulation.EmulationLib) computed in a child process.
    EmulationCrash, naming `what` (e.g. 'partition s1 (layers sm, fl)'), when the child dies or fails."""
    batch = np.ascontiguousarray(np.asarray(batch, dtype=np.float64))
    with tempfile.TemporaryDirectory(prefix="splitrack-emu-") as tmp:
        fin, fout = Path(tmp) / "in.npy", Path(tmp) / "out.npy"
        np.save(fin, batch)
        cmd = [sys.executable, "-m", "splitting.emulation_guard", str(Path(lib.library).resolve()), lib.project,
               ",".join(map(str, lib.in_sizes)), ",".join(map(str, lib.out_sizes)), str(fin), str(fout)]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                               cwd=str(Path(__file__).resolve().parents[1]))
        except subprocess.TimeoutExpired:
            raise EmulationCrash(f"the hls4ml emulation of {what or lib.project} did not finish in {timeout:.0f} s") from None
        if r.returncode != 0 or not fout.is_file():
            how = (f"crashed ({_signal_name(r.returncode)})" if r.returncode < 0 else f"failed (exit {r.returncode})")
            last = [l for l in (r.stderr or "").strip().splitlines() if l.strip()]
            detail = f": {last[-1].strip()[:200]}" if last else ""
            raise EmulationCrash(f"the compiled hls4ml emulation of {what or lib.project} {how}{detail}; hls4ml 1.3 "
                                 "cannot be trusted with this partition: cut its layers differently or leave them out")
        out = np.load(fout)
    return out.reshape((len(batch),) + tuple(out_shape)) if out_shape else out


def _main(argv) -> int:
    from .emulation import EmulationLib

    library, project, n_in, n_out, fin, fout = argv
    lib = EmulationLib(library, project, [int(n) for n in n_in.split(",")], [int(n) for n in n_out.split(",")])
    np.save(fout, lib.predict(np.load(fin)))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
