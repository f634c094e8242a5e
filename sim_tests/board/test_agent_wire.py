"""The agent's wire format and its one-file, Python 3.8 constraint (no processes needed)."""
import ast
import sys
import socket
import struct
import threading

import numpy as np
import pytest

from harness.board import agent as wire
from splitting.contract import Contract

AGENT_SRC = wire.__file__


def test_agent_is_python38_and_imports_only_stdlib_numpy_and_its_siblings():
    src = open(AGENT_SRC).read()
    tree = ast.parse(src, feature_version=(3, 8))  # a board runs Python 3.8: no newer syntax
    allowed = set(sys.stdlib_module_names) | {"numpy", "pynq", "contract", "emulation", "splitting"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [(node.module or "").split(".")[0]]
        else:
            continue
        assert set(names) <= allowed, f"agent.py imports {names}: a board has only stdlib, numpy (and pynq)"


def test_header_and_record_layout_is_fixed():
    # the layout is the wire contract with boards running older copies: changing it needs a version bump
    assert wire.HEADER.size == 24 and wire.RECORD.size == 40
    msg = wire.pack_message(wire.FRAME, frame=2**40 + 3, stage=2, part=1, payload=b"abc",
                            records=wire.pack_records([(1, 4, 0xFFFF, 0, 10, 20, 30, 40)]))
    magic, ver, mtype, frame, stage, part, length, nrec = struct.unpack_from("<2sBBqHHIH2x", msg)
    assert (magic, ver, mtype, frame, stage, part, length, nrec) == (b"SR", 1, wire.FRAME, 2**40 + 3, 2, 1, 3, 1)
    assert struct.unpack_from("<hHHHqqqq", msg, 24) == (1, 4, 0xFFFF, 0, 10, 20, 30, 40)
    assert msg[64:] == b"abc"


def _pair():
    a, b = socket.socketpair()
    return a, b


def test_reader_reassembles_messages_split_across_and_merged_in_segments():
    c = Contract("host", "p0", (300,), "ap_fixed<16,6>")
    x = np.random.default_rng(0).uniform(-30, 30, (5, 300))
    msgs = [wire.pack_message(wire.FRAME, frame=i, payload=c.encode(x[i]),
                              records=wire.pack_records([(0, 0, 1, 0, i, i, i, i)] * i)) for i in range(5)]
    blob = b"".join(msgs)
    a, b = _pair()

    def writer():  # odd chunk sizes: headers and payloads cut anywhere, several messages per chunk
        for i in range(0, len(blob), 37):
            a.sendall(blob[i:i + 37])
        a.close()

    t = threading.Thread(target=writer)
    t.start()
    r = wire.Reader(b, size=64)  # smaller than one message: the buffer has to grow
    for i in range(5):
        mtype, frame, stage, part, records, payload = r.message()
        assert (mtype, frame) == (wire.FRAME, i)
        assert wire.unpack_records(records) == [(0, 0, 1, 0, i, i, i, i)] * i
        assert np.array_equal(c.decode(payload), c.decode(c.encode(x[i])))
    with pytest.raises(EOFError):
        r.message()
    t.join()
    b.close()


def test_reader_refuses_foreign_bytes():
    a, b = _pair()
    a.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(wire.ProtocolError, match="not a splitrack agent"):
        wire.Reader(b).message()
    a.close()
    b.close()


def test_reader_refuses_absurd_lengths():
    a, b = _pair()
    a.sendall(struct.pack("<2sBBqHHIH2x", b"SR", 1, 1, 0, 0, 0, 2**31, 0))
    with pytest.raises(wire.ProtocolError, match="refusing"):
        wire.Reader(b).message()
    a.close()
    b.close()


def test_wait_until_is_never_early():
    import time

    for d in (0, 50_000, 300_000, 2_000_000):
        t0 = time.perf_counter_ns()
        wire.wait_until(t0 + d)
        assert time.perf_counter_ns() - t0 >= d


def test_pacer_measures_the_timer_latency_and_is_never_early():
    import time

    pacer = wire.Pacer(late_ns=10**9)
    assert 0 < pacer.calibrate() < 10**9  # sleeps wake late, by a measured amount (not the initial guess)
    for d in (20_000, 200_000, 1_000_000):
        for _ in range(20):
            t0 = time.perf_counter_ns()
            pacer.wait_until(t0 + d)
            assert time.perf_counter_ns() - t0 >= d


from hypothesis import given, settings, strategies as st  # noqa: E402

from splitting.contract import Contract as PlanContract  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from(["float32", "ap_fixed<16,6>", "ap_fixed<8,3,AP_RND,AP_SAT>", "ap_ufixed<12,4>",
                              "ap_fixed<18,8>", "ap_fixed<32,16,AP_RND_CONV,AP_SAT_SYM>"]),
       shape=st.lists(st.integers(1, 7), min_size=1, max_size=3), width=st.sampled_from([32, 64]),
       seed=st.integers(0, 10_000))
def test_agent_contract_encodes_and_decodes_exactly_as_the_plan_contract(dtype, shape, width, seed):
    ref = PlanContract("a", "b", tuple(shape), dtype, data_width=width)
    c = wire.Contract.from_dict(ref.to_dict())
    x = np.random.default_rng(seed).uniform(-300, 300, shape)
    for _ in range(2):  # the second time from the cached properties
        assert c.encode(x) == ref.encode(x)
        p = ref.encode(x)
        np.testing.assert_array_equal(c.decode(p), ref.decode(p))
    assert c.to_dict() == ref.to_dict() and c.payload_bytes == ref.payload_bytes
