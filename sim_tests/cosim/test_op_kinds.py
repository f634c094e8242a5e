"""One registry of op kinds (splitting/op_kinds.py): every interpreter of a partition's op list (the bit-exact
reference, the RTL generator's da4ml trace, the fast model) keys its handlers on it, and covers every kind, or
refuses it by name with the reason."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from harness.agent import fast_model
from harness.cosim import bitexact, rtlgen
from splitting.op_kinds import INPUT, KINDS, Handlers

TABLES = {"bit-exact reference": bitexact.STEPS, "RTL generation": rtlgen.TRACE, "fast model": fast_model.STEPS}


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_interpreter_covers_every_op_kind(name):
    t = TABLES[name]
    assert t.uncovered() == [], f"{name} neither computes nor refuses {t.uncovered()}"
    assert not set(t.table) & set(t.refused)
    assert set(t.table) | set(t.refused) == set(KINDS)


@pytest.mark.parametrize("name", sorted(TABLES))
def test_a_kind_an_interpreter_does_not_compute_is_refused_by_name(name):
    t = TABLES[name]
    for kind in sorted(t.refused) + ["frobnicate"]:
        with pytest.raises(t.error, match=rf"layer7: .* does not compute op kind '{kind}': "):
            t.handler(kind, "layer7")
    for kind in t.table:
        assert callable(t.handler(kind))


def test_the_reference_and_the_fast_model_refuse_what_they_do_not_model():
    """Today's split: the table activations (sigmoid, tanh) are the fast model's only; the reference and the RTL
    say so, by their own error types (the cosimulation's DA4MLShortfall is a one-line UserError)."""
    assert set(bitexact.STEPS.refused) == set(rtlgen.TRACE.refused) == {"sigmoid", "tanh"}
    assert fast_model.STEPS.refused == {}
    assert rtlgen.TRACE.error is rtlgen.DA4MLShortfall and fast_model.STEPS.error is fast_model.NotModelled


def test_the_op_list_reader_makes_only_registered_kinds():
    """harness/cosim/ops.py builds each Op with its kind as a literal (or an activation's name, checked
    against relu/linear and the table activations): every literal is a kind of the registry."""
    src = (Path(__file__).resolve().parents[2] / "harness" / "cosim" / "ops.py").read_text()
    kinds = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "Op" and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant):
                kinds.add(first.value)
            elif isinstance(first, ast.IfExp):
                kinds |= {first.body.value, first.orelse.value}
    assert len(kinds) >= 7 and kinds <= set(KINDS) | {INPUT}, kinds - set(KINDS)
    from harness.cosim.ops import TABLE_ACTIVATIONS

    assert set(TABLE_ACTIVATIONS) <= set(KINDS)


def test_a_table_refuses_kinds_outside_the_registry_and_twice():
    t = Handlers("a test", KeyError)
    with pytest.raises(ValueError, match="not one of splitting.op_kinds.KINDS"):
        t.handles("conv3d")(lambda: None)
    t.handles("dense")(lambda: None)
    with pytest.raises(ValueError, match="registered twice"):
        t.refuse("dense", "no")
    assert "relu" in t.uncovered() and "dense" not in t.uncovered()
