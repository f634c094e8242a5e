"""Where splitrack keeps what it computes once (hls4ml projects, rule4ml estimates, trained reference models,
Verilator builds, virtual racks' state): one folder per user, whatever the working folder.

`$SPLITRACK_CACHE` names the folder; otherwise it is the platform's user cache folder (platformdirs:
`~/.cache/splitrack` on Linux, `~/Library/Caches/splitrack` on macOS). Every module that caches asks
`cache_root()` here, so that `deploy` run from another folder finds the projects `verify` compiled.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Dict


def cache_root() -> Path:
    """The cache folder (absolute; not created here): `$SPLITRACK_CACHE` if set, else the user cache folder."""
    env = os.environ.get("SPLITRACK_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    import platformdirs

    return Path(platformdirs.user_cache_dir("splitrack", appauthor=False))


def cache_sizes(root: Path = None) -> Dict[str, int]:
    """Bytes used under each top-level entry of the cache ({} when it does not exist)."""
    root = Path(root or cache_root())
    if not root.is_dir():
        return {}
    out = {}
    for entry in sorted(root.iterdir()):
        if entry.is_symlink() or entry.is_file():
            out[entry.name] = entry.lstat().st_size
            continue
        total = 0
        for dirpath, _, files in os.walk(entry):
            for f in files:
                try:
                    total += os.lstat(os.path.join(dirpath, f)).st_size
                except OSError:  # removed while we walk (another process cleaning up)
                    pass
        out[entry.name] = total
    return out


def clean_cache(root: Path = None, keep=("racks",)) -> int:
    """Delete the cache's entries except `keep` (a running virtual rack keeps its keys under racks/);
    returns the bytes freed."""
    root = Path(root or cache_root())
    freed = 0
    for name, size in cache_sizes(root).items():
        if name in keep:
            continue
        p = root / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        freed += size
    return freed
