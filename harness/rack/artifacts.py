"""What a partition's board must carry besides the agent's code: the partition's logic (a virtual board: the
hls4ml emulation library of `splitting.hls.project_dir`, checked against the sha256 its manifest recorded, and
the fast model beside it; a real PYNQ-Z2: bitstream + .hwh from `splitrack build`) and the agent backend that
runs it."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Optional

from harness.rack import wiring as wiring_mod
from harness.rack.rackfile import Board
from harness.rack.ssh import local_sha256
from splitting.errors import UserError
from splitting.plan import Plan


def artifact_files(plan: Plan, name: str, board: Board) -> Dict[str, Path]:
    """Board file name (inside part/) -> local file of the partition's logic, for this kind of board."""
    return artifact(plan, name, board)[0]


def artifact(plan: Plan, name: str, board: Board):
    """(artifact_files, the agent's backend config) of a partition on this kind of board, the hls4ml project
    looked up once (its cache key hashes the model and asks for the hls4ml version: milliseconds, once per
    partition, not once per use)."""
    if board.virtual:
        from splitting.hls import ARTIFACT, project_dir

        folder = project_dir(plan, name)
        files = {"partition.so": checked_library(folder, name)}
        meta = json.loads((folder / ARTIFACT).read_text())
        fast_files, backend = _fast(plan, name, wiring_mod.emulation_backend(plan, name, "partition.so",
                                                                             meta["project"]))
        files.update(fast_files)  # the fast model's file, when the partition has one
        return files, backend
    hls = plan.path(f"{name}/hls")
    bits = sorted(hls.rglob("*.bit")) if hls.exists() else []
    hwhs = sorted(hls.rglob("*.hwh")) if hls.exists() else []
    if not bits or not hwhs:
        raise UserError(
            f"partition {name}: no bitstream (.bit + .hwh) under {hls}; build it with `splitrack build "
            f"{plan.root}` on a machine with Vivado, or deploy to virtual boards"
        )
    return ({"partition.bit": bits[-1], "partition.hwh": hwhs[-1]},
            wiring_mod.overlay_backend(plan, name, "partition.bit", "partition.hwh"))


def checked_library(folder: Path, name: str) -> Path:
    """The emulation library of a cached hls4ml project, after checking it against the sha256 its manifest
    (artifact.json) recorded when it was built. Raises UserError (one line, naming the file and what to do)
    for a manifest or library that is missing or damaged. A manifest written before checksums were recorded
    gets the library's checksum now (first use), and is checked from then on."""
    from splitting.hls import ARTIFACT

    art = Path(folder) / ARTIFACT
    rebuild = f"remove {folder} (the cache entry) and run again to rebuild it"
    try:
        meta = json.loads(art.read_text())
        lib = Path(folder) / meta["library"]
    except FileNotFoundError:
        raise UserError(f"partition {name}: the hls4ml cache entry has no manifest {art}; {rebuild}") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"partition {name}: the manifest {art} is damaged ({e}); {rebuild}") from None
    if not lib.is_file():
        raise UserError(f"partition {name}: the library {lib} is missing from the hls4ml cache; {rebuild}")
    have = local_sha256(lib)
    want = meta.get("library_sha256")
    if want is None:
        meta["library_sha256"] = have
        meta["library_sha256_recorded"] = "first deploy"
        tmp = art.with_name(art.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, art)
    elif have != want:
        raise UserError(f"partition {name}: the cached library {lib} is damaged (sha256 {have[:12]}, built as "
                        f"{str(want)[:12]}); {rebuild}")
    return lib


def _fast(plan: Plan, name: str, emu_cfg: Optional[dict] = None):
    """(files, backend) of fast_build.board_files for a virtual board: the fast model's file (none when the
    partition has a layer it does not compute) and the agent backend, kind "fast" (the agent checks it
    against the emulation library at start and falls back to it) or `emu_cfg` unchanged."""
    from harness.rack.fast_build import board_files

    return board_files(plan, name, emu_cfg or {})
