"""Time to each protocol fault's outcome, on local agents (the README's fault table, rows of the agent's
protocol): what a stranger, a host of another deployment, a broken peer and a bad plan meet, and how fast.

    .venv/bin/python benchmarks/protocol_faults.py

Each fault is tried `--repeat` times; the median and the maximum time are printed with the outcome.
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.agent import wire  # noqa: E402
from harness.rack.local_rack import LocalRack  # noqa: E402
from harness.measure.stream import AgentUnreachable, Pipeline  # noqa: E402
from splitting.plan import Plan, PlanError  # noqa: E402

sys.path.insert(0, str(ROOT / "sim_tests"))
from identity_plan import identity_plan  # noqa: E402  (the tests' plan helper)

M = wire.MsgType


def _closed_after(address, data, secret=None):
    """Seconds from connect until the agent closes the connection, and what it sent."""
    t0 = time.perf_counter()
    s = wire.connect(address, secret, 10) if secret else socket.create_connection(address, timeout=10)
    s.settimeout(30)
    if data:
        s.sendall(data)
    got = b""
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
    except ConnectionResetError:
        pass
    dt = time.perf_counter() - t0
    s.close()
    return dt, got


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    rows = {}

    def timed(name, fn, outcome):
        ts = []
        for _ in range(args.repeat):
            ts.append(fn())
        rows[name] = (statistics.median(ts), max(ts), outcome)
        print(f"{name:<52} median {statistics.median(ts) * 1e3:8.1f} ms  max {max(ts) * 1e3:8.1f} ms  {outcome}",
              flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        plan = identity_plan(2, shape=(8,))
        with LocalRack(tmp / "rack") as rack:
            w = rack.start(plan)
            addr = w.endpoints["s0"].address
            hdr = struct.Struct("<2sBBqHHIH2x")
            timed("stranger sends SHUTDOWN x3 (wrong proof)",
                  lambda: _closed_after(addr, wire.pack_message(M.SHUTDOWN) * 3)[0],
                  "connection closed at authentication; agent runs on")
            timed("stranger sends 64 junk bytes",
                  lambda: _closed_after(addr, bytes(range(64)))[0], "closed at authentication")
            timed("stranger sends a 64 MiB header",
                  lambda: _closed_after(addr, hdr.pack(b"SR", wire.VERSION, 1, 0, 0, 0, 64 << 20, 0) * 2)[0],
                  "closed at authentication, nothing allocated")
            timed("stranger connects and stays silent",
                  lambda: _closed_after(addr, b"")[0], "closed after auth_timeout (5 s)")

            def wrong_secret():
                bad = type(w)(**{**w.__dict__, "secret": wire.new_secret()})
                t0 = time.perf_counter()
                try:
                    Pipeline(bad, connect_timeout=10)
                except AgentUnreachable:
                    return time.perf_counter() - t0
                raise AssertionError("a host of another deployment was let in")
            timed("host of another deployment (wrong secret)", wrong_secret,
                  "AgentUnreachable: ... refused our proof: deployed with another secret")
            timed("authenticated peer sends a 64 MiB header",
                  lambda: _closed_after(addr, hdr.pack(b"SR", wire.VERSION, 1, 1 << 40, 0xFFFF, 0, 64 << 20, 0),
                                        w.secret)[0],
                  "this connection closed (payload beyond the link's contract), one log line")
        with LocalRack(tmp / "decoding") as rack:
            w = rack.start(plan, {n: {"kind": "passthrough", "decode": True} for n in plan.partitions})

            def wrong_size():
                with Pipeline(w) as pipe:
                    t0 = time.perf_counter()
                    pipe.conns["s0"].send(wire.pack_message(int(M.FRAME), frame=pipe._base | 7,
                                                            stage=wire.HOST_STAGE, payload=b"\0" * 3))
                    while not pipe.agent_errors:
                        time.sleep(0.0002)
                    assert "failed on frame 7" in pipe.agent_errors[0]["message"], pipe.agent_errors
                    return time.perf_counter() - t0
            timed("host's session sends a frame of the wrong size", wrong_size,
                  "ERROR to the host naming board, stage and frame (decode refuses it)")
        f = tmp / "plan"
        identity_plan(2, shape=(8,)).save(f)
        d = json.loads((f / "plan.json").read_text())
        d.pop("hash")
        (f / "plan.json").write_text(json.dumps(d))

        def load_refused():
            t0 = time.perf_counter()
            try:
                Plan.load(f)
            except PlanError:
                return time.perf_counter() - t0
            raise AssertionError("accepted")
        timed("plan.json without its hash", load_refused, "PlanError, one line, exit 2")
        for p in d["partitions"]:
            if p["name"] == "s1":
                p["name"] = "s1$(touch X)"
        for s in d["stages"]:
            s["partitions"] = ["s1$(touch X)" if n == "s1" else n for n in s["partitions"]]
        for c in d["links"]:
            for k in ("src", "dst"):
                if c[k] == "s1":
                    c[k] = "s1$(touch X)"
        d["hash"] = "0" * 16
        (f / "plan.json").write_text(json.dumps(d))
        timed("partition named s1$(touch X)", load_refused, "PlanError: ... is not a valid name; nothing runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
