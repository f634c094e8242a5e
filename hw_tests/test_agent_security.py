"""Strangers on the data network of whatever rack --boards names (real or virtual): while a stream runs, one
sends SHUTDOWN, junk, HELLO, 64 MiB headers, forged frames, a handshake with a wrong secret and idle
connections to every agent; the stream completes with every frame equal to the chained emulation.
(The same on local agents, with more checks: sim_tests/agent/test_agent_security.py.)"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from harness.measure.stream import Pipeline

# the sim tests' module imports its helpers (identity_plan) from sim_tests/, as pytest puts it on the path there
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sim_tests"))
from sim_tests.agent.test_agent_security import Stranger  # noqa: E402

pytestmark = pytest.mark.hw


def test_stream_completes_exactly_while_a_stranger_attacks_every_agent(make_plan, frames, deployed):
    from splitting.chain import emulation_runner, run_chain

    plan, _, _ = make_plan("fc_neuron")  # a fan-out and a join: every kind of link
    x, _ = frames("fc")
    x = np.concatenate([x] * 10)  # 400 frames, long enough to overlap many rounds of attacks
    expected = run_chain(plan, x, emulation_runner(plan)).reshape(len(x), -1)
    dep = deployed(plan)
    with Pipeline(dep.wiring) as pipe:
        stranger = Stranger(dep.wiring, pipe._base, plan.input_links[0].payload_bytes)
        stranger.start()
        try:
            res = pipe.stream(x, in_flight=4, rate=100, timeout=20)
        finally:
            stranger.halt.set()
            stranger.join(timeout=30)
        health = {n: pipe.ping(n) for n in plan.partitions}
    assert np.array_equal(res.outputs().reshape(len(x), -1), expected)
    assert stranger.rounds >= 3 and stranger.wrong_secret_refused >= 1
    for name, h in health.items():
        assert h["counters"]["refused"] > 0 and h["counters"]["errors"] == 0, (name, h["counters"])
