"""Board agent overhead on loopback: per-hop round trip against a raw Python TCP echo, and pipelined
throughput through 5 agents against one stage alone.

    .venv/bin/python benchmarks/agent_overhead.py [--out benchmarks/out] [--quick]

1. Per hop. The same payload (a frame of the contract's bytes) makes a round trip host -> process -> host:
   - raw echo:  a Python process that reads the payload's bytes from a TCP socket and writes them back;
   - framed echo: the agent's wire format (header, timestamp record) answered by a bare loop using the
                agent's own reader and packer: what the framing alone costs, on both ends;
   - agent:     one board agent (passthrough backend) whose outgoing link is the host: header, timestamp
                record, receive / compute / send threads, and its output back on the host's connection
                (authenticated at connect, in a session opened by HELLO: as the host streams);
   - agent+decode: the same, decoding the payload and encoding the output through the contract (what an
                emulation or overlay backend in "values" mode costs on top of the transport, compute excluded).
   - agent overlay: the overlay backend in raw-word mode (io "raw") on a stand-in for pynq
                (sim_tests/agent/pynq_standin: PynqBuffer DMA buffers, simple-mode AXI DMA channels) whose
                accelerator copies the input words to the output buffer: the frame is received into an input
                DMA buffer, both DMA transfers are posted and waited for, and the output buffer is sent as
                it is. The real board's DMA takes its own time; this is the agent's data handling around it.
   The client is a plain blocking loop for all of them (no host-side threads), reading each reply into a
   reused buffer, interleaved in rounds so that noise from other processes hits every variant alike, in
   sessions of fresh processes; "per-round" is the median over rounds of a variant's p50 divided by the raw
   echo's p50 of the same round.
   Two placements. "same CPU" (the headline): client and servers pinned to one CPU, so every microsecond
   either side spends is on the round trip. "any CPU": wherever the scheduler puts them; on a virtual
   machine a wake-up across CPUs costs tens of us, which makes round trips bimodal and hides overhead.
   Targets: agent p50 <= 1.3 x raw p50; agent overlay p50 <= 1.6 x raw p50.
2. Pipelined. 5 agents in a chain, each with the timing model (equal stages of T = cycles / 100 MHz),
   frames streamed with several in flight through harness.measure.stream; against one such agent alone.
   Target: chain throughput >= 0.9 x single stage throughput. The CPU each agent and the host use per frame
   is measured beside it: 5 agents and the host share this machine's CPUs, a real rack has a CPU per board.
   "cpu need/have" is that CPU (5 agents + host, per frame) over CPUs x stage time: near 1 the virtual rack,
   not the stages, sets the pace. (Each timed wait of the timing model, like any blocking wait, costs a
   virtual machine tens of microseconds of CPU: 36-42 us per 170 us sleep measured on the 2-core VM of
   November 2026, against ~15 us for the rest of an agent's frame.)
--compare DIR (e.g. /work/main, another checkout) adds "<name> agent" and "<name> overlay": the same two agents
with the agent's code of that checkout (its own shipped files: the package harness/agent with splitting's
modules, or an older checkout's flat copies of harness/board/files.py), interleaved in the same rounds:
before/after of the agent itself in one run.
Prints a table and saves agent_overhead.png (+ .json) in --out.
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.agent import wire  # noqa: E402
from harness.agent.files import agent_files  # noqa: E402
from harness.rack import local_rack  # noqa: E402
from harness.rack.local_rack import LocalRack  # noqa: E402
from harness.rack.wiring import overlay_backend  # noqa: E402
from harness.measure.stream import Pipeline  # noqa: E402

sys.path.insert(0, str(ROOT / "sim_tests"))
from identity_plan import identity_plan  # noqa: E402  (the tests' plan helper)

FRAME = int(wire.MsgType.FRAME)  # a plain int per message, as the agent uses: an IntEnum packs slower
VARIANTS = ("raw echo", "framed echo", "agent", "agent+decode", "agent overlay")
STANDIN = ROOT / "sim_tests" / "agent" / "pynq_standin"  # the stand-in pynq (never shipped to a board)
PLACEMENT = {"per_hop": "client and servers on the same CPU", "per_hop_any_cpu": "on any CPU"}
ECHO_SERVER = r"""
import socket, sys
n = int(sys.argv[1])
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0)); srv.listen(1)
print(srv.getsockname()[1], flush=True)
c, _ = srv.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
buf = bytearray(n); view = memoryview(buf)
while True:
    got = 0
    while got < n:
        k = c.recv_into(view[got:])
        if not k:
            sys.exit(0)
        got += k
    c.sendall(buf)
"""


FRAMED_ECHO = r"""
import socket, sys, time
sys.path.insert(0, sys.argv[1])
from harness.agent import wire  # the agent's own Reader and pack_message, none of its threads or bookkeeping
FRAME = int(wire.MsgType.FRAME)
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0)); srv.listen(1)
print(srv.getsockname()[1], flush=True)
c, _ = srv.accept(); wire.set_socket_options(c)
r = wire.Reader(c)
while True:
    try:
        mtype, frame, stage, part, recs, payload = r.message()
    except EOFError:
        sys.exit(0)
    t = time.time_ns()
    c.sendall(wire.pack_message(FRAME, frame, 0, part, payload, recs + wire.RECORD.pack(0, 0, 0xFFFF, 0, t, t, t, t)))
"""


class FramedEcho:
    """The agent's wire format, answered by a bare loop: what framing alone costs."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        for name, src in agent_files().items():  # the files a board gets (harness/agent/files.py)
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(src.read_bytes())
        self.proc = subprocess.Popen([sys.executable, "-c", FRAMED_ECHO, str(folder)], stdout=subprocess.PIPE)
        port = int(self.proc.stdout.readline())
        self.hop = AgentHop.__new__(AgentHop)
        self.hop.sock = socket.create_connection(("127.0.0.1", port))
        wire.set_socket_options(self.hop.sock)
        self.hop.reader = wire.Reader(self.hop.sock)
        self.hop.frame = 0
        self.hop.w = wire

    def rtt(self, payload):
        return self.hop.rtt(payload)

    def close(self):
        self.hop.close()
        self.proc.wait(timeout=5)


def recv_exact(sock, view, n):
    got = 0
    while got < n:
        k = sock.recv_into(view[got:n])
        if not k:
            raise EOFError
        got += k


class RawEcho:
    def __init__(self, n):
        self.n = n
        self.proc = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, str(n)], stdout=subprocess.PIPE)
        port = int(self.proc.stdout.readline())
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray(n)
        self.view = memoryview(self.buf)

    def rtt(self, payload):
        t = time.perf_counter_ns()
        self.sock.sendall(payload)
        recv_exact(self.sock, self.view, self.n)
        return time.perf_counter_ns() - t

    def close(self):
        self.sock.close()
        self.proc.wait(timeout=5)


class AgentHop:
    """A synchronous client of one agent whose output link is the host (this connection). wire_mod: the wire
    format module of the agent's checkout (--compare: an older one may authenticate another way)."""

    def __init__(self, wiring, payload_len, wire_mod=wire):
        endpoint = wiring.endpoints["s0"]
        if wire_mod is wire:
            self.sock = wire.connect(endpoint.address, wiring.secret, 10, wiring.agent_id("s0"), wiring.host_id())
        else:  # an older checkout's handshake (bound to nothing, or to what its own connect takes)
            import inspect

            args = (endpoint.address, wiring.secret, 10)
            if len(inspect.signature(wire_mod.connect).parameters) > 3:
                args += (wiring.agent_id("s0"), wiring.host_id())
            self.sock = wire_mod.connect(*args)
        w = self.w = wire_mod
        session = w.new_session()
        self.sock.sendall(w.pack_message(w.MsgType.HELLO, payload=json.dumps(
            {"role": "host", "session": session}).encode()))
        self.reader = w.Reader(self.sock, max_payload=max(payload_len, w.MAX_CONTROL_PAYLOAD))
        assert self.reader.message()[0] == w.MsgType.PONG  # the session is open
        self.frame = session << w.SESSION_SHIFT

    def rtt(self, payload):
        self.frame += 1
        w = self.w
        msg = w.pack_message(FRAME, frame=self.frame, stage=w.HOST_STAGE, payload=payload)
        t = time.perf_counter_ns()
        self.sock.sendall(msg)
        # like the raw echo's client: the reply read into a reused buffer, not copied out (views)
        m = self.reader.message(copy=False)
        dt = time.perf_counter_ns() - t
        assert m[0] == FRAME and m[1] == self.frame and len(m[5]) == len(payload), m[:4]
        return dt

    def close(self):
        self.sock.close()


def pin(cpus) -> None:
    """Run this process (and the servers it starts, which inherit it) on these CPUs only."""
    if cpus is not None:
        os.sched_setaffinity(0, cpus)


def checkout_code(root: Path):
    """(files, module) of another checkout's agent, as LocalRack(code=...) takes them: that checkout's own
    list of shipped files (harness/agent/files.py, loaded from its file: the package layout, started as
    `python -m harness.agent`), or, in an older checkout, harness/board/files.py's SHIPPED (flat copies, started
    as `python -m agent`), read without importing it (it looks its modules up in this checkout's packages)."""
    new, old = root / "harness" / "agent" / "files.py", root / "harness" / "board" / "files.py"
    if new.is_file():
        spec = importlib.util.spec_from_file_location("_compared_files", new)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.agent_files(), mod.MODULE
    if not old.is_file():
        raise SystemExit("--compare %s: neither %s nor %s" % (root, new, old))
    table = next(n.value for n in ast.parse(old.read_text()).body if isinstance(n, ast.Assign)
                 and getattr(n.targets[0], "id", "") == "SHIPPED")
    files = {name: root / (module.replace(".", "/") + ".py") for name, module in ast.literal_eval(table).items()}
    missing = [str(files[n]) for n in ("agent.py", "wire.py") if not files[n].is_file()]
    if missing:
        raise SystemExit("--compare %s: no %s" % (root, ", ".join(missing)))
    # an older checkout may not have a newer backend's module
    return {n: f for n, f in files.items() if f.is_file()}, "agent"


def _shipped(files, name):
    """The source of the shipped module file `name` (e.g. "wire.py") among another checkout's agent files: at
    the package path (harness/agent/wire.py) or, in an older checkout, flat (wire.py)."""
    return next(src for dst, src in files.items() if Path(dst).name == name)


def _module_of(path: Path, name: str):
    """A module of another checkout, loaded from its file under a name of its own (not imported as ours)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # (dataclasses look their module up while the class is made)
    spec.loader.exec_module(mod)
    return mod


def _config_for(files):
    """local_rack's agent_config, keeping only the fields the other checkout's AgentConfig knows (an older
    agent refuses a config with fields it does not know)."""
    known = set(_module_of(_shipped(files, "agent_config.py"), "other_agent_config").AgentConfig.__dataclass_fields__)
    ours = local_rack.agent_config

    def config(*a, **k):
        return {f: v for f, v in ours(*a, **k).items() if f in known}
    return config


def compare_variants(compare):
    name = Path(compare).resolve().name
    return (f"{name} agent", f"{name} overlay")


def per_hop(elements: int, sessions: int, rounds: int, per_round: int, workdir: Path, cpus=None, compare=None):
    """Round trips of every variant, interleaved in rounds; each session starts fresh server processes, so
    that one process the scheduler happens to treat badly cannot bias a variant for the whole run.
    cpus: the CPUs client and servers share (None: wherever the scheduler puts them)."""
    before = os.sched_getaffinity(0)
    pin(cpus)
    try:
        return _per_hop(elements, sessions, rounds, per_round, workdir, compare)
    finally:
        pin(before)


def _per_hop(elements, sessions, rounds, per_round, workdir, compare=None):
    plan = identity_plan(1, shape=(elements,))
    c = plan.links[0]
    payload = c.encode(np.random.default_rng(0).uniform(-8, 8, elements))
    variants = VARIANTS + (compare_variants(compare) if compare else ())
    samples = {k: [] for k in variants}
    rounds_p50 = {k: [] for k in variants}
    for session in range(sessions):
        folder = workdir / f"session{session}"
        racks, clients = [], {"raw echo": RawEcho(len(payload)), "framed echo": FramedEcho(folder / "framed")}
        try:
            bit = folder / "copy.bit"  # the stand-in's bitstream: an accelerator copying words in to out
            bit.parent.mkdir(parents=True, exist_ok=True)
            bit.write_text(json.dumps({"accelerator": "copy"}))
            overlay = overlay_backend(plan, "s0", str(bit), str(bit.with_suffix(".hwh")), io="raw")
            starts = [("agent", {"kind": "passthrough"}, None),
                      ("agent+decode", {"kind": "passthrough", "decode": True}, None),
                      ("agent overlay", overlay, None)]
            if compare:
                other = checkout_code(Path(compare))
                starts += [(compare_variants(compare)[0], {"kind": "passthrough"}, other),
                           (compare_variants(compare)[1], overlay, other)]
            for variant, backend, code in starts:
                rack = LocalRack(folder / variant.replace(" ", "_"),
                                 env={"PYTHONPATH": str(STANDIN)} if backend is overlay else None, code=code)
                racks.append(rack)
                our_config = local_rack.agent_config
                if code:  # only the fields the other checkout's agent knows go into its config
                    local_rack.agent_config = _config_for(code[0])
                try:
                    w = rack.start(plan, {"s0": backend})
                finally:
                    local_rack.agent_config = our_config
                clients[variant] = AgentHop(w, len(payload),
                                            _module_of(_shipped(code[0], "wire.py"), "other_wire") if code else wire)
            for fn in clients.values():  # warm-up: page faults, first connections, import caches
                for _ in range(200):
                    fn.rtt(payload)
            for r in range(rounds):
                for name, fn in clients.items():
                    got = [fn.rtt(payload) for _ in range(per_round)]
                    samples[name].extend(got)
                    rounds_p50[name].append(float(np.median(got)))
        finally:
            for fn in clients.values():
                fn.close()
            for rack in racks:
                rack.stop()
    # each round's p50 against the raw echo's p50 of the same round: noise from other processes cancels
    ratio = {k: float(np.median(np.asarray(v) / np.asarray(rounds_p50["raw echo"]))) for k, v in rounds_p50.items()}
    return len(payload), {k: np.asarray(v) / 1e3 for k, v in samples.items()}, ratio


def _cpu_s(pids) -> float:
    """User + system CPU seconds of these processes so far (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / tick


def pipelined(stages: int, cycles: int, frames: int, rounds: int, in_flight: int, workdir: Path):
    """Throughput of a chain of `stages` agents and of one agent alone, streamed in alternating rounds (so that
    load from other processes hits both alike); per-round ratios and their median."""
    racks, pipes, pids = {}, {}, {}
    x = np.random.default_rng(1).uniform(-8, 8, (frames, 64))
    out = {1: {"throughput": [], "latency_p50_us": [], "agent_cpu_us_per_frame": [], "host_cpu_us_per_frame": []}}
    out[stages] = {k: [] for k in out[1]}
    try:
        for n in (1, stages):
            racks[n] = LocalRack(workdir / f"chain{n}")
            w = racks[n].start(identity_plan(n, shape=(64,)), timing={"cycles": cycles, "clock_mhz": 100})
            pids[n] = [a.proc.pid for a in racks[n].agents.values()]
            pipes[n] = Pipeline(w)
            pipes[n].stream(x[:50], in_flight=in_flight)  # warm-up
        for _ in range(rounds):
            for n in (1, stages):
                cpu0, host0 = _cpu_s(pids[n]), time.process_time()
                res = pipes[n].stream(x, in_flight=in_flight, timeout=30)
                cpu1, host1 = _cpu_s(pids[n]), time.process_time()
                d = out[n]
                d["throughput"].append(res.throughput)
                d["latency_p50_us"].append(float(np.median(res.latencies_ns()) / 1e3))
                # CPU time per frame: on 2 shared cores this, not the stage time, can be the limit
                d["agent_cpu_us_per_frame"].append((cpu1 - cpu0) / frames / n * 1e6)
                d["host_cpu_us_per_frame"].append((host1 - host0) / frames * 1e6)
    finally:
        for n in pipes:
            pipes[n].close()
        for r in racks.values():
            r.stop()
    ratios = [b / a for a, b in zip(out[1]["throughput"], out[stages]["throughput"])]
    summary = {n: {k: float(np.median(v)) for k, v in d.items()} for n, d in out.items()}
    summary["ratio"] = float(np.median(ratios))
    summary["round_ratios"] = ratios
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    ap.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    ap.add_argument("--elements", type=int, nargs="+", default=[64, 1024],
                    help="frame sizes (ap_fixed<16,6> elements) for the per-hop comparison")
    ap.add_argument("--compare", metavar="DIR", help="another checkout (e.g. /work/main): its agent and overlay "
                    "agent run beside this one's, interleaved (before/after in one run)")
    ap.add_argument("--skip-pipelined", action="store_true", help="the per-hop comparison only")
    ap.add_argument("--stage-us", type=float, nargs="+", default=[200.0, 500.0, 1000.0],
                    help="stage time(s) of the timing model for the pipelined run, microseconds")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sessions, rounds, per_round, frames, prounds = (2, 3, 100, 200, 2) if args.quick else (5, 4, 250, 600, 5)

    report = {"per_hop": {}, "per_hop_any_cpu": {}, "pipelined": {}, "host": os.uname().nodename,
              "cpus": os.cpu_count(), "load_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for key, cpus in (("per_hop", {min(os.sched_getaffinity(0))}), ("per_hop_any_cpu", None)):
            for el in args.elements:
                print(f"per hop ({PLACEMENT[key]}): {el} elements, {sessions} sessions x {rounds} rounds x "
                      f"{per_round} round trips per variant ...", flush=True)
                nbytes, s, ratio = per_hop(el, sessions, rounds, per_round, tmp / f"hop{el}{key}", cpus=cpus,
                                           compare=args.compare)
                report[key][el] = {"bytes": nbytes, **{k: {"p50": float(np.percentile(v, 50)),
                                                           "p90": float(np.percentile(v, 90)),
                                                           "p99": float(np.percentile(v, 99)),
                                                           "round_ratio": ratio[k],
                                                           "samples": v.tolist()} for k, v in s.items()}}
        for us in ([] if args.skip_pipelined else args.stage_us):
            cycles = int(round(us * 100))
            print(f"pipelined: 5 stages of {us:g} us ({cycles} cycles at 100 MHz) and 1 alone, {prounds} rounds of "
                  f"{frames} frames ...", flush=True)
            report["pipelined"][us] = pipelined(5, cycles, frames, prounds, in_flight=16, workdir=tmp / f"pipe{cycles}")

    variants = VARIANTS + (compare_variants(args.compare) if args.compare else ())
    for key in ("per_hop", "per_hop_any_cpu"):
        print(f"\nPer-hop round trip on loopback (us), same payload, interleaved rounds, {PLACEMENT[key]}")
        print(f"{'frame':>14} {'variant':>14} {'p50':>8} {'p90':>8} {'p99':>8} {'p50/raw':>8} {'per-round':>10}")
        for el, d in report[key].items():
            raw = d["raw echo"]["p50"]
            for k in variants:
                v = d[k]
                label = f"{el} el/{d['bytes']} B"
                print(f"{label:>14} {k:>14} {v['p50']:8.1f} {v['p90']:8.1f} {v['p99']:8.1f} "
                      f"{v['p50'] / raw:8.2f} {v['round_ratio']:10.2f}")
    print("\nPipelined throughput (frames/s, median of rounds; ratio: median of per-round ratios), timing model, "
          "in flight 16")
    print(f"{'stage us':>9} {'1 stage':>9} {'5 stages':>9} {'ratio':>6} {'ideal':>8} {'lat 5 (us)':>11} "
          f"{'cpu/agent/frame us':>19} {'host cpu/frame us':>18} {'cpu need/have':>14}")
    for us, d in report["pipelined"].items():
        r = d["ratio"]
        # the CPU the 5-stage rack needs per frame against what the machine's CPUs give per stage time: at or
        # above 1 the virtual rack, not the stages, sets the pace
        need = (5 * d[5]["agent_cpu_us_per_frame"] + d[5]["host_cpu_us_per_frame"]) / (report["cpus"] * us)
        d["cpu_need_over_have"] = need
        print(f"{us:9.0f} {d[1]['throughput']:9.0f} {d[5]['throughput']:9.0f} {r:6.2f} {1e6 / us:8.0f} "
              f"{d[5]['latency_p50_us']:11.0f} {d[5]['agent_cpu_us_per_frame']:19.0f} {d[5]['host_cpu_us_per_frame']:18.0f}"
              f" {need:14.2f}")
    print(f"(load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    report["compare"] = args.compare
    _plot(report, out / "agent_overhead.png", variants)
    slim = json.loads(json.dumps(report, default=float))
    for key in ("per_hop", "per_hop_any_cpu"):
        for d in slim[key].values():
            for k in variants:
                d[k].pop("samples")
    (out / "agent_overhead.json").write_text(json.dumps(slim, indent=1))
    print(f"\nsaved {out / 'agent_overhead.png'} and {out / 'agent_overhead.json'}")
    return 0


def _plot(report, path: Path, variants=VARIANTS) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(report["per_hop"])
    fig, axes = plt.subplots(2, len(sizes) + 1, figsize=(5.5 * (len(sizes) + 1), 9), squeeze=False)
    for row, key in enumerate(("per_hop", "per_hop_any_cpu")):
        for ax, el in zip(axes[row], sizes):
            d = report[key][el]
            labels = [f"{k}\np50 {d[k]['p50']:.0f} us\n{d[k]['round_ratio']:.2f}x raw" for k in variants]
            ax.boxplot([d[k]["samples"] for k in variants], tick_labels=labels, showfliers=False, whis=(5, 95))
            ax.axhline(1.3 * d["raw echo"]["p50"], ls="--", c="r", lw=1, label="1.3 x raw p50")
            ax.set_title(f"round trip, {el} elements ({d['bytes']} B), {PLACEMENT[key]}", fontsize=10)
            ax.set_ylabel("us (box p25-p75, whiskers p5-p95)")
            ax.set_ylim(0, 2.5 * max(d[k]["p50"] for k in variants))  # a long tail must not flatten the boxes
            ax.tick_params(axis="x", labelsize=8)
            ax.legend(loc="upper left")
    pipes = report["pipelined"]
    xs = np.arange(len(pipes))
    ax = axes[0][-1]
    one = [d[1]["throughput"] for d in pipes.values()]
    five = [d[5]["throughput"] for d in pipes.values()]
    ax.bar(xs - 0.2, one, 0.4, label="1 stage alone")
    ax.bar(xs + 0.2, five, 0.4, label="5 stages pipelined")
    ax.scatter(xs, [1e6 / float(us) for us in pipes], marker="_", s=400, c="k", label="1 / stage time", zorder=3)
    for x, b, d in zip(xs, five, pipes.values()):
        ax.annotate(f"{d['ratio']:.2f}x", (x + 0.2, b), xytext=(0, 3), textcoords="offset points", ha="center", fontsize=9)
    ax.set_xticks(xs, [f"{float(us):g} us/stage" for us in pipes])
    ax.set_ylabel("frames / s")
    ax.set_title("pipelined throughput (timing model)")
    ax.legend(loc="upper right")
    ax = axes[1][-1]  # why the shortest stages fall short: the CPU the virtual rack needs per frame
    agents = [5 * d[5]["agent_cpu_us_per_frame"] for d in pipes.values()]
    host = [d[5]["host_cpu_us_per_frame"] for d in pipes.values()]
    ax.bar(xs, agents, 0.5, label="5 agents")
    ax.bar(xs, host, 0.5, bottom=agents, label="host")
    ax.scatter(xs, [report["cpus"] * float(us) for us in pipes], marker="_", s=400, c="k", zorder=3,
               label=f"{report['cpus']} CPUs x stage time")
    ax.set_xticks(xs, [f"{float(us):g} us/stage" for us in pipes])
    ax.set_ylabel("CPU us per frame, 5 stages")
    ax.set_title("CPU per frame of the 5-stage virtual rack")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
