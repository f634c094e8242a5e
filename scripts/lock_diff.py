"""Which installed versions differ from requirements.lock (what `make test-latest` tests beyond the lock).

    python scripts/lock_diff.py requirements.lock FREEZE.txt
Prints one line per package whose version differs, is new, or is gone; "(none)" when the two agree.
"""
import re
import sys

from packaging.utils import canonicalize_name

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def pins(path):
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = PIN.match(line.strip())
            if m and canonicalize_name(m.group(1)) != "pip":  # the installer itself is not locked
                out[canonicalize_name(m.group(1))] = m.group(2)
    return out


def main(lock, freeze):
    a, b = pins(lock), pins(freeze)
    rows = [f"  {name}: {a.get(name, '-')} -> {b.get(name, '-')}" for name in sorted(set(a) | set(b))
            if a.get(name) != b.get(name)]
    print("\n".join(rows) if rows else "  (none)")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
