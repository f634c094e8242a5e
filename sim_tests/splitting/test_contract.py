"""Boundary contracts: fixed-point quantisation against the `quantizers` package (hls4ml's own dependency),
and the wire/AXI-stream packing round trip."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from splitting.contract import Contract, ContractError, FixedType, Packing, Select, assemble


@pytest.mark.parametrize("rnd", ["TRN", "RND", "RND_CONV", "TRN_ZERO", "RND_ZERO", "RND_INF", "RND_MIN_INF"])
@pytest.mark.parametrize("sat", ["WRAP", "SAT", "SAT_SYM"])
@pytest.mark.parametrize("width,integer", [(16, 6), (8, 3), (18, 8), (12, 1)])
def test_quantize_matches_quantizers_package(rnd, sat, width, integer):
    from quantizers import get_fixed_quantizer_np

    ft = FixedType(width, integer, True, "AP_" + rnd, "AP_" + sat)
    rng = np.random.default_rng(width * 31 + integer)
    scale = 2.0 ** (integer + 1)  # values beyond the range, to exercise overflow
    x = np.concatenate([rng.uniform(-scale, scale, 4000), (np.arange(-64, 64) + 0.5) * ft.step])
    ref = get_fixed_quantizer_np(rnd, sat)(x, 1, integer - 1, width - integer)
    np.testing.assert_array_equal(ft.quantize(x), ref)


def test_parse_and_print():
    ft = FixedType.parse("ap_fixed<18, 8, AP_RND, AP_SAT>")
    assert (ft.width, ft.integer, ft.rounding, ft.saturation) == (18, 8, "AP_RND", "AP_SAT")
    assert str(ft) == "ap_fixed<18,8,AP_RND,AP_SAT>"
    assert str(FixedType.parse("ap_ufixed<8,2>")) == "ap_ufixed<8,2>"
    assert FixedType.parse("ap_fixed<16,6>").step == 2 ** -10
    with pytest.raises(ContractError, match="ap_fixed<W,I>"):
        FixedType.parse("float16")


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), width=st.sampled_from([8, 12, 16, 18, 24, 32]), data_width=st.sampled_from([32, 64]),
       seed=st.integers(0, 2**16))
def test_wire_round_trip_and_packing(n, width, data_width, seed):
    dtype = f"ap_fixed<{width},{width // 2}>"
    c = Contract("a", "b", (n,), dtype, data_width=data_width)
    ft = c.fixed
    x = ft.quantize(np.random.default_rng(seed).uniform(-2 ** (width // 2 - 1), 2 ** (width // 2 - 1), n))
    np.testing.assert_array_equal(c.decode(c.encode(x)), x)
    p = c.packing
    assert p.beats * p.elements_per_beat >= n > (p.beats - 1) * p.elements_per_beat
    beats = c.beats(x)
    assert len(beats) == p.beats and [b[2] for b in beats].count(True) == 1 and beats[-1][2]
    used = (n - (p.beats - 1) * p.elements_per_beat) * p.element_bits // 8
    assert bin(beats[-1][1]).count("1") == used
    assert all(b[1] == p.full_tkeep for b in beats[:-1])


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 40), width=st.integers(2, 32), frac=st.integers(0, 12), signed=st.booleans(),
       mode=st.sampled_from(["", ",AP_RND,AP_SAT", ",AP_RND_CONV,AP_SAT_SYM", ",AP_TRN_ZERO,AP_SAT_ZERO"]),
       data_width=st.sampled_from([32, 64]), seed=st.integers(0, 2**16))
def test_wire_bytes_follow_the_raw_integers_element_by_element(n, width, frac, signed, mode, data_width, seed):
    """The codec against a plain-Python one built on to_raw (checked above against `quantizers`): each element
    is its raw integer, two's complement, in a little-endian container; unused lanes are zero; reading
    takes only the type's bits of each container."""
    integer = width - min(frac, width - 1)
    dtype = f"{'ap_fixed' if signed else 'ap_ufixed'}<{width},{integer}{mode}>"
    c = Contract("a", "b", (n,), dtype, data_width=data_width)
    ft, p = c.fixed, c.packing
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 2.0 ** integer, n)  # beyond the range too: rounding and overflow modes apply
    nbytes = p.element_bits // 8
    expected = b"".join((int(r) & ((1 << p.element_bits) - 1)).to_bytes(nbytes, "little") for r in ft.to_raw(x))
    expected += bytes(p.beats * p.bytes_per_beat - len(expected))
    assert c.encode(x) == expected
    garbage = rng.integers(0, 256, len(expected), dtype=np.uint8).tobytes()
    ref = []
    for i in range(n):
        r = int.from_bytes(garbage[i * nbytes:(i + 1) * nbytes], "little") & ((1 << width) - 1)
        if signed and r >> (width - 1):
            r -= 1 << width
        ref.append(r * ft.step)
    np.testing.assert_array_equal(c.decode(garbage), np.array(ref))


def test_float32_wire_and_errors():
    c = Contract("a", "b", (3, 2), "float32")
    x = np.arange(6, dtype=np.float32).reshape(3, 2) / 7
    np.testing.assert_array_equal(c.decode(c.encode(x)), x)
    with pytest.raises(ContractError, match="6"):
        c.encode(np.zeros(5))
    with pytest.raises(ContractError, match="bytes"):
        c.decode(b"\0" * 5)
    with pytest.raises(ContractError, match="data width"):
        Packing.for_elements(4, "ap_fixed<40,8>", 32)


def test_select_and_assemble_are_batch_safe():
    a = Contract("p", "q", (4, 4, 2), "float32", combine="concat", index=0, count=2, select=Select(-1, 0, 2))
    b = Contract("p", "q", (4, 4, 3), "float32", combine="concat", index=1, count=2, select=Select(-1, 2, 5))
    x = np.random.default_rng(0).normal(size=(7, 4, 4, 5))
    np.testing.assert_array_equal(assemble([b, a], [b.take(x), a.take(x)]), x)
    assert Contract.from_dict(a.to_dict()) == a


def test_board_side_modules_need_no_tensorflow_and_parse_as_python38():
    import ast
    import subprocess
    import sys
    from pathlib import Path

    import splitting

    root = Path(splitting.__file__).parent
    for name in ("contract.py", "emulation.py", "plan.py"):
        ast.parse((root / name).read_text(), feature_version=(3, 8))  # PYNQ images ship Python 3.8+
    code = ("import sys, splitting.plan, splitting.contract, splitting.emulation; "
            "bad = [m for m in ('tensorflow', 'keras', 'hls4ml') if m in sys.modules]; sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=root.parent).returncode == 0
