"""The reference plans on a rack: every frame's answer checked against references the boards did not make.

- bit for bit against the plan's chained hls4ml emulation (run on this machine, stage by stage);
- within the output contract's quantisation step against the hls4ml emulation of the whole, unsplit model
  (the rule `splitrack verify` applies);
- against Keras: on the digits models, the same class for (nearly) every frame. hls4ml's fixed point
  (weights truncated to the precision, softmax as a lookup table) moves their probabilities by far more
  than one output step, so Keras is compared where the two must agree: the decision. On a model whose
  weights and inputs sit on a fixed-point grid (so that hls4ml's arithmetic is exact), every output is
  within the output contract's quantisation step of Keras, for all three kinds of split.
"""
from __future__ import annotations

import numpy as np
import pytest

from harness.rack.ssh import connect
from harness.measure.stream import Pipeline

pytestmark = pytest.mark.hw


def _stream(dep, x):
    with Pipeline(dep.wiring) as pipe:
        return pipe.stream(x, in_flight=8, timeout=10.0)


@pytest.mark.parametrize("name", ["fc_seq", "fc_neuron", "fc_input", "cnn_seq"])
def test_plan_on_boards_matches_references(name, make_plan, frames, deployed):
    from splitting.chain import emulation_runner, run_chain
    from splitting.hls import monolithic_emulation

    plan, models, keras_model = make_plan(name)
    x, y = frames("cnn" if name.startswith("cnn") else "fc")
    dep = deployed(plan)
    assert sorted(dep.placed) == sorted(plan.partitions)
    assert len({p.board for p in dep.placed.values()}) == len(plan.partitions)  # one board per partition

    res = _stream(dep, x)
    out = res.outputs().reshape(len(x), -1)
    assert len(res.frames) == len(x)

    chain = run_chain(plan, x, emulation_runner(plan)).reshape(len(x), -1)
    assert np.array_equal(out, chain), f"max diff {np.abs(out - chain).max()}"

    step = plan.output_links[0].step
    whole = monolithic_emulation(plan).predict(x).reshape(len(x), -1)
    assert np.abs(out - whole).max() <= step

    ref = keras_model.predict(x, verbose=0).reshape(len(x), -1)
    agree = np.mean(out.argmax(1) == ref.argmax(1))
    assert agree >= 0.95, f"boards and Keras agree on {agree:.0%} of frames"
    # the boards answer the digits correctly as often as Keras does, give or take a frame
    assert abs(np.mean(out.argmax(1) == y) - np.mean(ref.argmax(1) == y)) <= 1.5 / len(x)

    # every frame went through every partition of the plan, on the boards the deployment chose
    for f in res.frame_ids:
        stamps = res.stamps(f)
        assert set(stamps) == set(plan.partitions)
        for part, s in stamps.items():
            assert s["board"] == dep.placed[part].board
            assert s["t_recv"] <= s["t_compute_start"] <= s["t_compute_end"] <= s["t_send"]


@pytest.mark.parametrize("name", ["grid_seq", "grid_neuron", "grid_input"])
def test_grid_plan_on_boards_matches_keras_within_the_output_step(name, make_plan, deployed):
    from hw_tests.conftest import grid_frames

    plan, _, keras_model = make_plan(name)
    x = grid_frames()
    res = _stream(deployed(plan), x)
    out = res.outputs().reshape(len(x), -1)
    ref = keras_model.predict(x, verbose=0).reshape(len(x), -1)
    step = plan.output_links[0].step
    assert step == 2.0 ** -16 and np.abs(ref).max() > 1  # a fine step, and outputs that are not all zero
    assert np.abs(out - ref).max() <= step, f"max |boards - keras| {np.abs(out - ref).max()} > step {step}"


def test_parallel_join_receives_both_parts(make_plan, frames, deployed):
    plan, _, _ = make_plan("fc_input")
    join = next(p for p in plan.ordered_partitions() if p.kind == "join")
    producers = {c.src for c in plan.inputs_of(join.name)}
    assert len(producers) == 2
    x, _ = frames("fc")
    dep = deployed(plan)
    res = _stream(dep, x[:10])
    for f in res.frame_ids:
        s = res.stamps(f)[join.name]
        got = s["t_recv_by_src"]
        assert set(got) == producers  # both partial sums of every frame reached the join
        for src in producers:  # and the join computed only once both were there (one board clock)
            assert got[src] <= s["t_compute_start"]


def test_redeploy_without_changes_skips_flashing(make_plan, frames, deployed):
    plan, _, _ = make_plan("fc_seq")
    x, _ = frames("fc")
    first = deployed(plan)
    second = deployed(plan)
    assert second.flashed == []
    assert all(p.uploaded == [] and not p.restarted for p in second.placed.values())
    assert {p: v.pid for p, v in second.placed.items()} == {p: v.pid for p, v in first.placed.items()}

    # the board's copy of one artifact changes behind our back: only that board is flashed again
    victim = second.placed["s1"]
    board = second.boards["s1"]
    with connect(board) as c:
        so = c.remote_path(f"{board.workdir}/part/partition.so")
        c.put_bytes(b"not the partition's library", so)
    third = deployed(plan)
    assert third.flashed == ["s1"]
    assert third.placed["s1"].uploaded == ["part/partition.so"]
    assert third.placed["s1"].board == victim.board
    assert all(not third.placed[p].restarted for p in ("s0", "s2"))
    chain = _stream(third, x[:10]).outputs()
    from splitting.chain import emulation_runner, run_chain

    assert np.array_equal(chain.reshape(10, -1), run_chain(plan, x[:10], emulation_runner(plan)).reshape(10, -1))


def test_board_fixture_gives_a_reachable_board(board):
    with connect(board) as c:
        r = c.run([board.python, "-c", "import numpy, sys; print(sys.version_info >= (3, 8))"])
        assert r.stdout.strip() == "True"
