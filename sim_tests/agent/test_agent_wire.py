"""The agent's wire format, its authentication handshake and its pacer (no processes needed)."""
import socket
import struct
import threading

import numpy as np
import pytest

from harness.agent import wire
from harness.agent.pacer import PACER, Pacer
from splitting.contract import Contract


ME = wire.agent_id("plan1", "s1", "127.0.0.1", 7701)
PEERS = {wire.peer_id("plan1", "host"): "host", wire.peer_id("plan1", "s0"): "s0"}


def _agent_side(a, secret, got, me=ME, timeout=5):
    def run():
        try:
            got["role"] = wire.agent_handshake(a, secret, timeout, me, PEERS)
        except (wire.AuthError, OSError, EOFError) as e:
            got["error"] = e
            a.close()
    t = threading.Thread(target=run)
    t.start()
    return t


def test_handshake_admits_the_secret_and_refuses_anything_else_before_reading_more():
    secret = wire.new_secret()
    for peer_secret, ok in ((secret, True), (wire.new_secret(), False)):
        a, b = socket.socketpair()
        got = {}
        t = _agent_side(a, secret, got)
        if ok:
            wire.peer_handshake(b, peer_secret, 5, ME, wire.peer_id("plan1", "host"))
        else:
            with pytest.raises(wire.AuthError, match="another secret"):
                wire.peer_handshake(b, peer_secret, 5, ME, wire.peer_id("plan1", "host"))
        t.join()
        assert (got.get("role") == "host") is ok
        b.close()
    # a peer that sends anything but a proof: the agent reads exactly the proof's 48 bytes and refuses
    a, b = socket.socketpair()
    b.sendall(wire.pack_message(wire.MsgType.SHUTDOWN) * 4)
    with pytest.raises(wire.AuthError):
        wire.agent_handshake(a, secret, 5, ME, PEERS)
    assert len(a.recv(4096)) == 4 * 24 - 48  # the rest was never read by the handshake
    a.close()
    b.close()


def test_the_agent_learns_who_connected_and_a_producer_is_no_host():
    secret = wire.new_secret()
    a, b = socket.socketpair()
    got = {}
    t = _agent_side(a, secret, got)
    wire.peer_handshake(b, secret, 5, ME, wire.peer_id("plan1", "s0"))
    t.join()
    assert got["role"] == "s0"
    # a partition the agent takes no link from is nobody it accepts, even with the secret
    a, b = socket.socketpair()
    got = {}
    t = _agent_side(a, secret, got)
    with pytest.raises(wire.AuthError, match="refused our proof"):
        wire.peer_handshake(b, secret, 5, ME, wire.peer_id("plan1", "s7"))
    t.join()
    assert isinstance(got["error"], wire.AuthError)


def test_a_proof_meant_for_one_agent_is_refused_by_every_other():
    """The relay: a stranger on a dead agent's port hands the host's handshake to another agent of the same
    deployment (same secret). Every field of the identity counts: partition, endpoint (host and port), plan."""
    secret = wire.new_secret()
    meant = wire.agent_id("plan1", "s1", "127.0.0.1", 7701)
    for other in (wire.agent_id("plan1", "s2", "127.0.0.1", 7701), wire.agent_id("plan1", "s1", "127.0.0.1", 7702),
                  wire.agent_id("plan1", "s1", "10.0.0.9", 7701), wire.agent_id("plan2", "s1", "127.0.0.1", 7701)):
        a, b = socket.socketpair()
        got = {}
        t = _agent_side(a, secret, got, me=other)  # the agent actually reached
        with pytest.raises(wire.AuthError, match="not plan1/s1@127.0.0.1:7701"):
            wire.peer_handshake(b, secret, 5, meant, wire.peer_id("plan1", "host"))
        t.join()
        assert isinstance(got["error"], wire.AuthError) and "role" not in got, other
        b.close()


def test_an_agent_proof_for_another_identity_is_refused_by_the_peer():
    """The other direction of a relay: whatever answers must prove the identity the peer meant."""
    secret = wire.new_secret()
    a, b = socket.socketpair()

    def impostor():  # knows the secret (another agent of the deployment), answers as itself
        a.sendall(wire.AUTH_MAGIC + b"n" * wire.NONCE_BYTES)
        got = wire.recv_exact(a, 48)
        a.sendall(wire._mac(secret, b"agent", got[:16], b"n" * 16, wire.agent_id("plan1", "s2", "127.0.0.1", 7702),
                            wire.peer_id("plan1", "host")))

    t = threading.Thread(target=impostor)
    t.start()
    with pytest.raises(wire.AuthError, match="cannot prove"):
        wire.peer_handshake(b, secret, 5, ME, wire.peer_id("plan1", "host"))
    t.join()


def test_the_handshake_has_one_deadline_however_the_bytes_trickle_in():
    """A peer that sends one byte every 0.3 s keeps a per-read timeout of 1 s from firing forever; the
    handshake's deadline is for all of it: 1 s after the challenge, whatever came."""
    import time

    secret = wire.new_secret()
    a, b = socket.socketpair()
    got = {}
    t0 = time.monotonic()
    t = _agent_side(a, secret, got, timeout=1.0)
    b.recv(24)
    try:
        for _ in range(20):
            time.sleep(0.3)
            b.send(b"x")
    except OSError:
        pass
    t.join()
    took = time.monotonic() - t0
    assert isinstance(got["error"], socket.timeout) and took < 3.0, (got, took)


def test_session_tag_rides_in_the_frame_id():
    s = wire.new_session()
    assert 0 < s < 2 ** wire.SESSION_BITS
    fid = (s << wire.SESSION_SHIFT) | 12345
    assert wire.session_of(fid) == s and fid & wire.FRAME_MASK == 12345 and fid < 2 ** 63


def test_header_and_record_layout_is_fixed():
    # the layout is the wire contract with boards running older copies: changing it needs a version bump
    assert wire.HEADER.size == 24 and wire.RECORD.size == 40
    msg = wire.pack_message(wire.MsgType.FRAME, frame=2**40 + 3, stage=2, part=1, payload=b"abc",
                            records=wire.pack_records([(1, 4, 0xFFFF, 0, 10, 20, 30, 40)]))
    magic, ver, mtype, frame, stage, part, length, nrec = struct.unpack_from("<2sBBqHHIH2x", msg)
    assert (magic, ver, mtype, frame, stage, part, length, nrec) == (b"SR", 2, 1, 2**40 + 3, 2, 1, 3, 1)
    assert struct.unpack_from("<hHHHqqqq", msg, 24) == (1, 4, 0xFFFF, 0, 10, 20, 30, 40)
    assert msg[64:] == b"abc"


def _pair():
    a, b = socket.socketpair()
    return a, b


def test_reader_reassembles_messages_split_across_and_merged_in_segments():
    c = Contract("host", "p0", (300,), "ap_fixed<16,6>")
    x = np.random.default_rng(0).uniform(-30, 30, (5, 300))
    msgs = [wire.pack_message(wire.MsgType.FRAME, frame=i, payload=c.encode(x[i]),
                              records=wire.pack_records([(0, 0, 1, 0, i, i, i, i)] * i)) for i in range(5)]
    blob = b"".join(msgs)
    a, b = _pair()

    def writer():  # odd chunk sizes: headers and payloads cut anywhere, several messages per chunk
        for i in range(0, len(blob), 37):
            a.sendall(blob[i:i + 37])
        a.close()

    t = threading.Thread(target=writer)
    t.start()
    r = wire.Reader(b, size=64, max_payload=c.payload_bytes)  # smaller than one message: the buffer has to grow
    for i in range(5):
        mtype, frame, stage, part, records, payload = r.message()
        assert (mtype, frame) == (wire.MsgType.FRAME, i)
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


def test_reader_refuses_lengths_beyond_its_bound_before_growing_its_buffer():
    a, b = _pair()
    a.sendall(struct.pack("<2sBBqHHIH2x", b"SR", wire.VERSION, 1, 0, 0, 0, 64 << 20, 0))
    r = wire.Reader(b, size=1024, max_payload=600)
    with pytest.raises(wire.ProtocolError, match="refusing"):
        r.message()
    assert len(r.buf) == 1024  # nothing allocated for the announced 64 MiB
    a.close()
    b.close()


def test_wait_until_is_never_early():
    import time

    for d in (0, 50_000, 300_000, 2_000_000):
        t0 = time.perf_counter_ns()
        PACER.wait_until(t0 + d)
        assert time.perf_counter_ns() - t0 >= d


def test_pacer_measures_the_timer_latency_and_is_never_early():
    import time

    pacer = Pacer(late_ns=10**9)
    assert 0 < pacer.calibrate() < 10**9  # sleeps wake late, by a measured amount (not the initial guess)
    for d in (20_000, 200_000, 1_000_000):
        for _ in range(20):
            t0 = time.perf_counter_ns()
            pacer.wait_until(t0 + d)
            assert time.perf_counter_ns() - t0 >= d


from hypothesis import given, settings, strategies as st  # noqa: E402



@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from(["float32", "ap_fixed<16,6>", "ap_fixed<8,3,AP_RND,AP_SAT>", "ap_ufixed<12,4>",
                              "ap_fixed<18,8>", "ap_fixed<32,16,AP_RND_CONV,AP_SAT_SYM>"]),
       shape=st.lists(st.integers(1, 7), min_size=1, max_size=3), width=st.sampled_from([32, 64]),
       seed=st.integers(0, 10_000))
def test_a_contract_read_from_its_dict_encodes_and_decodes_exactly_as_the_plan_contract(dtype, shape, width, seed):
    """As an agent reads its links from its config: rebuilt from to_dict, its cached properties included."""
    ref = Contract("a", "b", tuple(shape), dtype, data_width=width)
    c = Contract.from_dict(ref.to_dict())
    x = np.random.default_rng(seed).uniform(-300, 300, shape)
    for _ in range(2):  # the second time from the cached properties
        assert c.encode(x) == ref.encode(x)
        p = ref.encode(x)
        np.testing.assert_array_equal(c.decode(p), ref.decode(p))
    assert c.to_dict() == ref.to_dict() and c.payload_bytes == ref.payload_bytes
