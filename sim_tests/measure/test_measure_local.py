"""Measurement against real agents (local processes): injected clock skews are recovered, a timing model's
compute time shows in that board's dwell and nowhere else, links and dwells add up to end-to-end."""
import contextlib
import os

import numpy as np
import pytest

from harness.measure import attribution as measure
from harness.rack.local_rack import LocalRack
from identity_plan import identity_plan
from harness.measure.stream import Pipeline

# alone, after the parallel pass of `make test`: it pins itself to one CPU and compares hop times between two
# runs to tens of us, which another test's processes on that CPU would blur
pytestmark = pytest.mark.serial

SKEWS = {"s0": 2_000_000_000, "s1": -750_000_000, "s2": 12_345_678}
CYCLES = 30_000  # at 100 MHz: 300 us
FRAMES = 150


def within(measured_us, expected_us, slack_us=0.0):
    """Equal within 10 % or 20 us, plus `slack_us` for what the machine's load adds (see the test)."""
    return abs(measured_us - expected_us) <= max(0.1 * expected_us, 20.0) + slack_us


@contextlib.contextmanager
def one_cpu():
    """This thread, and the agents and threads it starts meanwhile, on one CPU. On a virtual machine a wake-up
    on the other, idle CPU costs 60-80 us more than on this one, and which one the scheduler picks varies
    from run to run: a link's p50 would jump by that much between two runs for no reason under test."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def run(tmp_path, timing):
    plan = identity_plan(stages=3, shape=(64,))
    x = np.random.default_rng(0).uniform(-1, 1, (FRAMES, 64))
    with one_cpu(), LocalRack(tmp_path) as rack:
        wiring = rack.start(plan, "passthrough", timing=timing, clock_skew_ns=SKEWS)
        with Pipeline(wiring) as pipe:
            # single frames paced at 400/s, so every agent idles alike in both runs (see measure_rack)
            res = measure.measure_rack(pipe, wiring, plan, x, in_flight=4, single_rate=400.0, probes=40)
    return res, wiring


def test_skew_recovered_and_timing_model_lands_in_its_board(tmp_path, sched_latency):
    base, wiring = run(tmp_path / "a", None)
    slow, _ = run(tmp_path / "b", {"s1": {"cycles": CYCLES, "clock_mhz": 100}})
    for part, skew in SKEWS.items():
        clock = slow.clocks[wiring.endpoints[part].board]
        # the configured skew comes back within the min-delay bound (and far inside 20 us on loopback)
        assert abs(clock["offset_ns"] - skew) <= max(clock["error_ns"], 1), clock
        assert abs(clock["offset_ns"] - skew) < 20_000
    # On an idle machine the figures below hold to 10 % or 20 us. What a busy machine adds is bounded by its
    # wake-up latency, measured during this test: a paced wait ends up to one late wake-up after its
    # deadline, and a hop's p50 moves between the two runs by up to two wake-ups in each run.
    late_us = sched_latency.p99 * 1e6
    s, b = slow.reports["single"]["stats"], base.reports["single"]["stats"]
    assert s["board s1 compute"]["p50"] >= CYCLES / 100 - 5  # the pacer never ends a frame early
    assert within(s["board s1 compute"]["p50"], CYCLES / 100, late_us), (s["board s1 compute"], sched_latency)
    added = s["board s1"]["p50"] - b["board s1"]["p50"]
    assert within(added, CYCLES / 100 - b["board s1 compute"]["p50"], 4 * late_us), (added, sched_latency)
    # the other hops do not take the added time: each moves by less than max(10 % of it, 20 us) (they do
    # move a little: a receiver that idled 300 us longer wakes up more slowly), plus the load's share
    for hop in ("board s0", "board s2", "link host->s0", "link s0->s1", "link s1->s2", "link s2->host"):
        assert abs(s[hop]["p50"] - b[hop]["p50"]) <= max(0.1 * added, 20.0) + 4 * late_us, \
            (hop, s[hop]["p50"], b[hop]["p50"], sched_latency)
        # with skews of 12 ms to 2 s, a wrong offset would make a link negative or huge
        assert 0 < s[hop]["p50"] < min(2000 + 4 * late_us, 10_000)
    # on the critical path the slow board holds its modelled time (a chain: every hop is on it)
    bd = slow.reports["single"]["breakdown_p50_us"]
    assert within(bd["board s1"] - b["board s1"]["p50"], CYCLES / 100 - b["board s1 compute"]["p50"], 4 * late_us)
    # the stream run: several in flight, throughput bounded by the 300 us stage
    st = slow.reports["stream"]
    assert st["in_flight"] == 4 and st["throughput_hz"] <= 1e6 / (CYCLES / 100) * 1.05
    assert np.allclose(slow.outputs.shape, (FRAMES, 64))
