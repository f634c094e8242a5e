"""Benchmarks on the rack with pytest-benchmark: its statistics, JSON, --benchmark-compare and
--benchmark-compare-fail work as usual; `extra_info` adds what the rack knows and a timer cannot: the
plan hash, the rack, every board's clock offset, and the per-hop breakdown (stats of every link and board,
critical-path medians), all of which `splitrack history add` imports.

    pytest hw_tests -m "hw and benchmark" --boards rack.toml --benchmark-json out.json
"""
import numpy as np
import pytest

from harness.measure import clocksync, attribution as measure
from harness.measure.stream import Pipeline

pytestmark = [pytest.mark.hw, pytest.mark.benchmark]

ROUNDS = 200


def digits_frames(plan, n):
    from harness.jobs.bench import bench_data

    return bench_data(plan, n, "digits")


def attach_breakdown(benchmark, plan, rack_name, wiring, frames, before, after):
    from harness.measure.compute_source import compute_sources

    compute = {p: c.to_dict() for p, c in compute_sources(plan, wiring).items()}  # what each board computed on
    benchmark.extra_info.update(measure.benchmark_extra_info(plan, rack_name, wiring, frames, before, after, compute))
    clocks = clocksync.models(before, after)
    topo = measure.Topology.from_plan(plan, {p: ep.board for p, ep in wiring.endpoints.items()})
    return measure.attribute(frames, topo, {b: m.to_host for b, m in clocks.items()})


@pytest.mark.parametrize("name", ["fc_seq", "fc_neuron"])
def test_bench_single_frame(benchmark, name, make_plan, deployed, rack):
    """One frame at a time through the rack: the timer sees host send to host receive."""
    plan, _, _ = make_plan(name)
    dep = deployed(plan)
    x, labels = digits_frames(plan, ROUNDS)
    got = []
    with Pipeline(dep.wiring) as pipe:
        before = measure.clock_offsets(pipe, dep.wiring)
        it = iter(range(10 ** 9))

        def one():
            i = next(it) % len(x)
            got.append(pipe.stream(x[i:i + 1], in_flight=1))

        benchmark.pedantic(one, rounds=ROUNDS, iterations=1, warmup_rounds=5)
        after = measure.clock_offsets(pipe, dep.wiring)
    # the timed rounds only; with --benchmark-disable (or under xdist) pytest-benchmark calls `one` just once
    warm = 0 if benchmark.disabled else 5
    timed = got[warm:]
    frames = [t for r in timed for t in r.timings()]
    assert len(frames) == (1 if benchmark.disabled else ROUNDS)
    att = attach_breakdown(benchmark, plan, rack.name, dep.wiring, frames, before, after)
    # the breakdown is a partition of each frame's end-to-end time (host-side), every hop present
    total = sum(att.critical[h] for h in att.order)
    np.testing.assert_allclose(total, att.e2e, rtol=0, atol=1)
    assert set(benchmark.extra_info["hops"]) >= {f"board {p}" for p in plan.partitions}
    # and the rack answers right: compare with the labels (a benchmark of wrong answers is worthless)
    outs = np.concatenate([r.outputs() for r in timed])
    order = np.array([(warm + k) % len(x) for k in range(len(timed))])
    acc = float(np.mean(np.argmax(outs.reshape(len(timed), -1), 1) == labels[order % len(labels)]))
    benchmark.extra_info["accuracy"] = acc
    assert acc > 0.9 or benchmark.disabled


def test_bench_stream(benchmark, make_plan, deployed, rack):
    """A sustained stream (8 in flight): the timer sees a whole stream; extra_info its throughput and hops."""
    plan, _, _ = make_plan("fc_seq")
    dep = deployed(plan)
    x, _ = digits_frames(plan, 300)
    got = []
    with Pipeline(dep.wiring) as pipe:
        before = measure.clock_offsets(pipe, dep.wiring)
        benchmark.pedantic(lambda: got.append(pipe.stream(x, in_flight=8)), rounds=3, iterations=1, warmup_rounds=1)
        after = measure.clock_offsets(pipe, dep.wiring)
    timed = got if benchmark.disabled else got[1:]
    frames = [t for r in timed for t in r.timings()]
    assert len(frames) == len(timed) * len(x)
    attach_breakdown(benchmark, plan, rack.name, dep.wiring, frames, before, after)
    tput = [measure.throughput_hz(r.timings()) for r in timed]
    benchmark.extra_info["throughput_hz"] = float(np.median(tput))
    assert all(t > 0 for t in tput)
