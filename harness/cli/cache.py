"""`splitrack cache [clean]`: where the user cache is, what it holds, and emptying it."""
from __future__ import annotations

import argparse

from splitting.user_cache import cache_root, cache_sizes, clean_cache


def configure(p: argparse.ArgumentParser) -> None:
    """Add the argument of `splitrack cache`: the action, show (default) or clean."""
    p.add_argument("action", nargs="?", choices=["show", "clean"], default="show",
                   help="show (default): the folder and the size of each part; clean: delete everything but "
                        "the state of virtual racks (the next run recompiles hls4ml projects)")


def human(n: int) -> str:
    """`n` bytes as text in B, KiB, MiB or GiB (powers of 1024), e.g. '1.5 MiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def run(args) -> int:
    """show: print the cache folder and each part's size; clean: empty it but the virtual racks' state and
    print the bytes freed. Returns 0."""
    root = cache_root()
    if args.action == "clean":
        freed = clean_cache(root)
        print(f"cache {root}: freed {human(freed)} (virtual racks' state kept)")
        return 0
    sizes = cache_sizes(root)
    print(f"cache {root} ($SPLITRACK_CACHE overrides): {human(sum(sizes.values()))}"
          + ("" if sizes else " (empty)"))
    for name, size in sizes.items():
        print(f"  {name:<12} {human(size):>10}")
    return 0
