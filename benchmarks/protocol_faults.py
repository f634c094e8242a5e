"""Time to each protocol fault's outcome, on local agents (the README's fault table, rows of the agent's
protocol): what a stranger, a host of another deployment, a broken peer and a bad plan meet, and how fast.

    .venv/bin/python benchmarks/protocol_faults.py

Each fault is tried `--repeat` times; the median and the maximum time are printed with the outcome.
"""
from __future__ import annotations

import argparse
import json
import os
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
from harness.measure.agent_conn import connect_agent  # noqa: E402
from harness.measure.stream import AgentUnreachable, Pipeline, StreamError  # noqa: E402
from splitting.plan import Plan, PlanError  # noqa: E402

sys.path.insert(0, str(ROOT / "sim_tests"))
from identity_plan import identity_plan  # noqa: E402  (the tests' plan helper)

M = wire.MsgType



def _seconds_to_refusal(w, what: str) -> float:
    """Seconds until the host's Pipeline over wiring `w` is refused (AgentUnreachable); AssertionError naming
    `what` when it is accepted."""
    t0 = time.perf_counter()
    try:
        Pipeline(w, connect_timeout=10)
    except AgentUnreachable:
        return time.perf_counter() - t0
    raise AssertionError(f"{what} was accepted")

def _closed_after(address, data, wiring=None):
    """Seconds from connect until the agent closes the connection, and what it sent (with `wiring`: connected
    as the host of that deployment, authenticated)."""
    t0 = time.perf_counter()
    s = connect_agent(wiring, "s0", 10) if wiring else socket.create_connection(address, timeout=10)
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
                                        w)[0],
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
        trust_rows(timed, tmp)
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


def trust_rows(timed, tmp: Path) -> None:
    """The faults of issue 24 (the second round): relay, crowds, slow senders, garbage from a board, lying
    stamps and clocks, a host clock step, plan files that exhaust or hang the host."""
    sys.path.insert(0, str(ROOT / "sim_tests" / "agent"))
    import hostile  # noqa: E402  (the tests' hostile peers)
    import numpy as np

    n = [0]

    def fresh():
        n[0] += 1
        return tmp / f"t{n[0]}"

    def relay():
        with LocalRack(fresh()) as rack:
            w = rack.start(identity_plan(3, shape=(8,)))
            rack.agents["s1"].proc.kill()
            rack.agents["s1"].proc.wait()
            r = hostile.Relay(w.endpoints["s1"].address, w.endpoints["s2"].address)
            r.start()
            try:
                return _seconds_to_refusal(w, "the relayed handshake")
            finally:
                r.close()
    timed("stranger on a dead agent's port relays the host to the next", relay,
          "refused by the next agent (proof bound to s1@port); AgentUnreachable, one line")

    def crowd():
        with LocalRack(fresh()) as rack:
            w = rack.start(identity_plan(2, shape=(8,)))
            crowds = [hostile.Crowd(ep.address) for ep in w.endpoints.values()]
            for c in crowds:
                c.start()
            try:
                time.sleep(1.0)
                t0 = time.perf_counter()
                with Pipeline(w, connect_timeout=20) as pipe:
                    assert pipe.stream(np.ones((100, 8)), timeout=20).complete
                return time.perf_counter() - t0
            finally:
                for c in crowds:
                    c.halt.set()
                    c.join(10)
    timed("32 idle strangers per agent, re-opened within 50 ms", crowd,
          "host connects and streams 100 frames (time: connect + stream)")

    with LocalRack(fresh()) as rack:
        w = rack.start(identity_plan(1, shape=(8,)))
        addr = w.endpoints["s0"].address

        def slow():
            s = socket.create_connection(addr, timeout=10)
            t0 = time.perf_counter()
            s.recv(24)
            try:
                while True:
                    s.send(b"x")
                    s.settimeout(4.5)
                    try:
                        if s.recv(64) == b"":
                            break
                    except socket.timeout:
                        pass
            except OSError:
                pass
            s.close()
            return time.perf_counter() - t0
        timed("stranger sends a byte every 4.5 s", slow, "closed at the handshake's deadline (auth_timeout 5 s)")

    def bad_pong(body):
        def run():
            rack, w, fake = hostile.with_fake(fresh(), "s1", body)
            try:
                return _seconds_to_refusal(w, "the bad PONG")
            finally:
                fake.close()
                rack.stop()
        return run
    timed("board answers HELLO with a PONG not UTF-8", bad_pong(b"\xff\xfe junk"), "AgentUnreachable: ... not JSON")
    timed("board answers HELLO with a PONG that is a list", bad_pong(b"[1, 2]"), "AgentUnreachable: not a JSON object")

    def bad_error():
        rack, w, fake = hostile.with_fake(fresh(), "s1", b"{}", then=wire.pack_message(M.ERROR, payload=b"\x80 x"))
        try:
            with Pipeline(w, connect_timeout=10) as pipe:
                t0 = time.perf_counter()
                try:
                    pipe.stream(np.ones((3, 8)), timeout=20)
                except StreamError as e:
                    assert "protocol error" in str(e)
                    return time.perf_counter() - t0
            raise AssertionError("accepted")
        finally:
            fake.close()
            rack.stop()
    timed("board sends an ERROR that is not JSON", bad_error, "StreamError naming the protocol error (timeout 20 s)")

    def lying(expect, **lie):
        def run():
            plan, rack, w, fake = hostile.lying_rack(fresh(), **lie)
            try:
                t0 = time.perf_counter()
                if expect == "run":
                    from harness.jobs.run import RunError, run_frames

                    try:
                        run_frames(plan, w, np.ones((50, 8)), None, fresh(), "local", check=False,
                                   progress=lambda s: None)
                    except RunError as e:
                        assert "untrusted" in str(e)
                        return time.perf_counter() - t0
                elif expect == "bench":
                    from harness.measure import attribution

                    with Pipeline(w) as pipe:
                        r = attribution.measure_rack(pipe, w, plan, np.ones((50, 8)), probes=32)
                    assert r.untrusted
                    return time.perf_counter() - t0
                else:
                    with Pipeline(w) as pipe:
                        try:
                            pipe.stream(np.ones((3, 8)), timeout=10)
                        except StreamError:
                            return time.perf_counter() - t0
                raise AssertionError("accepted")
            finally:
                fake.close()
                rack.stop()
        return run
    timed("board's stamps: dwell -1e15 us (run, 50 frames)", lying("run", stamps=lambda t: (t, t, t, t - 10 ** 18)),
          "RunError: untrusted: 50 of 50 frames ...; run.json kept, exit 2")
    timed("board's clock probe an hour ahead (bench's measurement)",
          lying("bench", stamps=lambda t: (t, t + 1000, t + 2000, t + 3000), probe_ahead_ns=3600 * 10 ** 9),
          "untrusted: ... before the host sent the frame; nothing attributed")
    timed("board sends 4096 records on a frame to the host",
          lying("records", stamps=lambda t: (t, t, t, t), extra_records=4095),
          "StreamError: header announces 4097 records, allows 2")

    def clock_step():
        import harness.measure.stream as stream

        with LocalRack(fresh()) as rack:
            w = rack.start(identity_plan(2, shape=(8,)), faults={"s1": {"drop_frames": [3]}})
            real = time.time_ns
            with Pipeline(w) as pipe:
                t0 = time.perf_counter()
                stream.time.time_ns = lambda: real() - 3600 * 10 ** 9 if time.perf_counter() - t0 > 0.05 else real()
                try:
                    pipe.stream(np.ones((5, 8)), in_flight=5, timeout=2.0)
                except StreamError:
                    return time.perf_counter() - t0
                finally:
                    stream.time.time_ns = real
        raise AssertionError("no timeout")
    timed("host's wall clock steps back 1 h, a frame lost (timeout 2 s)", clock_step,
          "StreamError: frame 3 did not come back within 2 s")

    # plan folders
    from splitting import hls
    import hashlib

    f = fresh() / "plan"
    identity_plan(2, shape=(8,)).save(f)
    good = json.loads((f / "plan.json").read_text())

    def refused(fn):
        def run():
            t0 = time.perf_counter()
            try:
                fn()
            except (PlanError, hls.UserError):
                return time.perf_counter() - t0
            raise AssertionError("accepted")
        return run

    def write(d):
        body = {k: v for k, v in d.items() if k != "hash"}
        d["hash"] = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
        (f / "plan.json").write_text(json.dumps(d))

    bad = json.loads(json.dumps(good))
    bad["stages"][0]["partitions"] = None
    write(bad)
    timed("plan.json: stages[0].partitions = null, valid hash", refused(lambda: Plan.load(f)),
          "PlanError naming the field, exit 2")
    (f / "plan.json").write_text("[" * 100_000 + "]" * 100_000)
    timed("plan.json nested 100,000 deep", refused(lambda: Plan.load(f)), "PlanError: nested more than 64 levels")
    write(json.loads(json.dumps(good)))
    plan = Plan.load(f)
    (f / "s0").mkdir(exist_ok=True)
    for kind in ("/dev/zero", "FIFO"):
        m = f / "s0" / "model.keras"
        m.unlink(missing_ok=True)
        if kind == "FIFO":
            os.mkfifo(m)
        else:
            m.symlink_to(kind)
        timed(f"partition model.keras is {kind}", refused(lambda: hls.project_dir(plan, "s0")),
              "PlanError: ... not a regular file, nothing read")


if __name__ == "__main__":
    sys.exit(main())
