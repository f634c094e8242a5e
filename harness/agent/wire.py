"""The agents' wire format: message types, header packing, buffered reads, the authentication handshake.

Shipped to every board beside the agent (Python 3.8+, standard library only); the host imports the same
module, so both ends speak one definition.

Connection (TCP, TCP_NODELAY; all integers little-endian)
---------------------------------------------------------
Every connection to an agent starts with a challenge-response over the deployment's secret (32 random
bytes that `deploy` writes to each board, mode 0600), before the agent reads anything else. Each proof is
bound to who proves it to whom: the agent's identity A = "PLAN/PARTITION@HOST:PORT" (its plan hash,
partition and the endpoint its peers reach it at) and the peer's P = "PLAN/host" (the host) or
"PLAN/PARTITION" (the agent of a link's producer):

    agent  -> peer   AUTH_HELLO: b"SRAUTH2\0" + nonce_a (16 bytes)
    peer   -> agent  nonce_p (16 bytes) + HMAC-SHA256(secret, "peer" | nonce_a | nonce_p | A | P)    (48 bytes)
    agent  -> peer   HMAC-SHA256(secret, "agent" | nonce_p | nonce_a | A | P)                      (32 bytes)
                     or REFUSED (32 bytes) when no peer it accepts made that proof

(A and P length-prefixed.) The agent tries the peers it accepts (the host, the producers of its incoming
links), learns which one connected, and from then on takes only what that peer may send: control messages
from the host, frames only on links whose producer it is. A proof meant for one agent is refused by every
other: a stranger on a dead agent's port who relays the host's handshake to the next agent gets nothing. The
peer checks the agent's proof in turn (a stranger squatting on the port cannot pose as the agent). The whole
handshake has one deadline (`timeout`, each side), however the bytes trickle in. Messages then cost nothing
extra per frame: the connection is the peer's proof.

Messages
--------
    header   "<2sBBqHHIH2x" (24 bytes): magic b"SR", version, message type, frame id, stage, part,
             payload length, number of timestamp records
    records  n x "<hHHHqqqq" (40 bytes): stage, partition id, source (partition id of the incoming link's
             producer, HOST_ID for the host), flags (0), t_recv, t_compute_start, t_compute_end, t_send:
             int64 ns of the board's clock. Agents forward earlier records as bytes, unparsed.
    payload  FRAME: exactly `Contract.encode` bytes of the link the frame travels on; `part` is that link's
             `index` in the consumer's assembly, `stage` the producer's stage (HOST_STAGE for the host).
             Other types carry JSON (PING, PONG, HELLO, ERROR) or "<q"/"<qqq" int64 timestamps (PROBE).

Frame ids carry the host's session: bits 40..62 hold the session tag the host chose at random in its HELLO,
bits 0..39 count frames within the session (see `session_of`). An agent drops frames of any other session.
"""
from __future__ import annotations

import enum
import hashlib
import hmac
import json
import secrets
import socket
import struct
import time


class MsgType(enum.IntEnum):
    """The message type byte of the header (see the module docstring for each type's payload)."""

    FRAME = 1  # a frame of a link (host -> first stage, board -> board, last stage -> host)
    ERROR = 2  # JSON {board, partition, stage, frame, message}: sent to the attached host, never swallowed
    PROBE = 3  # host -> agent: t1
    PROBE_REPLY = 4  # agent -> host: t1, t2 (receive), t3 (send), agent clock
    PING = 5  # JSON {} or {"frame": id}
    PONG = 6  # JSON health (partition, plan hash, frames done, free memory, session, the asked frame's state)
    SHUTDOWN = 7  # stop the agent
    HELLO = 8  # JSON {"role": "host", "session": tag}: this connection is the host's; answered by a PONG


MAGIC = b"SR"
VERSION = 2  # 2: authenticated connections, session tags in frame ids, HELLO answered (the handshake: AUTH_MAGIC)
HEADER = struct.Struct("<2sBBqHHIH2x")
RECORD = struct.Struct("<hHHHqqqq")
RECORD_HEAD = struct.Struct("<hHHH")  # a record's fixed fields, packed once per agent ...
OWN_RECORD = struct.Struct("<8sqqqq")  # ... then given as 8 bytes with the timestamps: the same layout as RECORD
FRAME_HEAD = struct.Struct("<4sqHHIH2x")  # HEADER, with magic, version and type given as 4 bytes (FRAME_PREFIX)
PROBE_REQ = struct.Struct("<q")
PROBE_REP = struct.Struct("<qqq")
FRAME_PREFIX = MAGIC + bytes((VERSION, MsgType.FRAME))
FRAME_TYPE = int(MsgType.FRAME)
HOST_STAGE = 0xFFFF
HOST_ID = 0xFFFF
MAX_CONTROL_PAYLOAD = 64 << 10  # JSON of PING/PONG/HELLO/ERROR: a health answer is well under 4 KiB
MAX_RECORDS = 4096

SESSION_SHIFT = 40
FRAME_MASK = (1 << SESSION_SHIFT) - 1
SESSION_BITS = 23  # bits 40..62: frame ids stay positive int64

AUTH_MAGIC = b"SRAUTH2\0"  # 2: proofs bound to both parties' identities (SRAUTH1: bound to nothing)
NONCE_BYTES = 16
MAC_BYTES = 32
SECRET_BYTES = 32
REFUSED = b"SRAUTH2 refused: no matching peer".ljust(MAC_BYTES, b"\0")[:MAC_BYTES]
HOST = "host"


class ProtocolError(Exception):
    """Bytes on a connection that are not splitrack agent messages."""


class AuthError(ProtocolError):
    """A peer that does not prove it knows the deployment's secret (or an agent that does not)."""


class AgentShed(AuthError):
    """The agent closed the connection before its challenge: it shed it (at its connection cap, or out of file
    descriptors). Transient: a connecting side retries until its own timeout."""


def new_session() -> int:
    """A random session tag (never 0: 0 is an agent's 'no host yet')."""
    return secrets.randbits(SESSION_BITS) or 1


def session_of(frame: int) -> int:
    """The session tag of a frame id: its bits 40..62 (frame >> SESSION_SHIFT)."""
    return frame >> SESSION_SHIFT


def new_secret() -> bytes:
    """A new deployment secret: SECRET_BYTES (32) random bytes from `secrets`."""
    return secrets.token_bytes(SECRET_BYTES)


def read_secret(path) -> bytes:
    """The deployment's secret from its file (hex text). Raises OSError, or ValueError if malformed."""
    with open(path) as f:
        text = f.read().strip()
    secret = bytes.fromhex(text)
    if len(secret) < 16:
        raise ValueError("secret file %s holds %d bytes, expected %d" % (path, len(secret), SECRET_BYTES))
    return secret


# --- authentication -------------------------------------------------------------------------------------
def agent_id(plan_hash, partition, host, port):
    """The identity an agent proves and is proven to: b"PLAN/PARTITION@HOST:PORT" (HOST:PORT as its peers
    reach it: the wiring's endpoint)."""
    return ("%s/%s@%s:%d" % (plan_hash, partition, host, int(port))).encode()


def peer_id(plan_hash, who):
    """The identity of a connecting peer: b"PLAN/host" for the host, b"PLAN/PARTITION" for the agent of a
    link's producer."""
    return ("%s/%s" % (plan_hash, who)).encode()


def _mac(secret, label, n1, n2, agent, peer):
    body = b"".join((label, n1, n2, len(agent).to_bytes(2, "little"), agent, len(peer).to_bytes(2, "little"), peer))
    return hmac.new(secret, body, hashlib.sha256).digest()


def recv_exact(sock, n, deadline=None):
    """Exactly n bytes (n small and fixed: the handshake's); EOFError if the peer closes first. With
    `deadline` (time.monotonic() seconds) socket.timeout once it passes, however the bytes trickle in."""
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("handshake not finished within its deadline (%d of %d bytes)" % (len(buf), n))
            sock.settimeout(left)
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed by peer")
        buf += chunk
    return bytes(buf)


def agent_handshake(sock, secret, timeout, me, peers):
    """The agent's side, on an accepted socket. me: this agent's agent_id; peers: {peer_id: role} of every
    peer it accepts. Returns the role of the peer whose proof matched; AuthError (after sending REFUSED) when
    none did, EOFError/OSError (socket.timeout past `timeout` seconds in all) otherwise. Reads exactly
    NONCE_BYTES + MAC_BYTES bytes."""
    deadline = time.monotonic() + timeout
    sock.settimeout(timeout)
    nonce_a = secrets.token_bytes(NONCE_BYTES)
    sock.sendall(AUTH_MAGIC + nonce_a)
    got = recv_exact(sock, NONCE_BYTES + MAC_BYTES, deadline)
    nonce_p, proof = got[:NONCE_BYTES], got[NONCE_BYTES:]
    role = who = None
    for ident, r in peers.items():  # every candidate compared (constant time each): the role is no secret
        if hmac.compare_digest(proof, _mac(secret, b"peer", nonce_a, nonce_p, me, ident)) and role is None:
            role, who = r, ident
    if role is None:
        try:
            sock.sendall(REFUSED)
        except OSError:
            pass
        raise AuthError("wrong proof: not the deployment's secret, or meant for another agent than %s"
                        % me.decode(errors="replace"))
    sock.settimeout(max(0.001, deadline - time.monotonic()))
    sock.sendall(_mac(secret, b"agent", nonce_p, nonce_a, me, who))
    sock.settimeout(None)
    return role


def peer_handshake(sock, secret, timeout, target, me):
    """The connecting side (host or a neighbouring agent): target is the agent_id of the agent it means to
    reach, me its own peer_id. AgentShed when the agent closed the connection during the handshake (it sheds
    connections under a crowd: retry); AuthError when it refused our proof (another secret, or it is not
    `target`) or cannot prove the secret itself; socket.timeout past `timeout` seconds in all."""
    deadline = time.monotonic() + timeout
    sock.settimeout(timeout)
    try:
        hello = recv_exact(sock, len(AUTH_MAGIC) + NONCE_BYTES, deadline)
    except EOFError:
        raise AgentShed("the agent closed the connection before its challenge (too many connections?)")
    if hello[:len(AUTH_MAGIC)] != AUTH_MAGIC:
        raise AuthError("no splitrack challenge (%r): not a splitrack agent of wire version %d (an agent of an older "
                        "splitrack: deploy again)" % (hello[:8], VERSION))
    nonce_a = hello[len(AUTH_MAGIC):]
    nonce_p = secrets.token_bytes(NONCE_BYTES)
    sock.sendall(nonce_p + _mac(secret, b"peer", nonce_a, nonce_p, target, me))
    try:
        proof = recv_exact(sock, MAC_BYTES, deadline)
    except EOFError:
        raise AgentShed("the agent closed the connection during the handshake (too many connections?)")
    if proof == REFUSED:
        raise AuthError("the agent refused our proof: it was deployed with another secret, or it is not %s "
                        "(deploy again)" % target.decode(errors="replace"))
    if not hmac.compare_digest(proof, _mac(secret, b"agent", nonce_p, nonce_a, target, me)):
        raise AuthError("the agent cannot prove the deployment's secret: another process holds its port")
    sock.settimeout(None)


def connect(address, secret, timeout, target, me):
    """A TCP connection to the agent `target` (its agent_id) at `address`, authenticated as `me` (a peer_id),
    TCP_NODELAY, blocking (no timeout) once open."""
    sock = socket.create_connection(address, timeout=timeout)
    try:
        set_socket_options(sock)
        peer_handshake(sock, secret, timeout, target, me)
    except BaseException:
        sock.close()
        raise
    return sock


# --- messages ---------------------------------------------------------------------------------------
def pack_message(mtype, frame=0, stage=0, part=0, payload=b"", records=b""):
    """One message as bytes: header, timestamp records (packed, see pack_records), payload."""
    return b"".join((HEADER.pack(MAGIC, VERSION, mtype, frame, stage, part, len(payload), len(records) // 40),
                     records, payload))


def pack_records(records):
    """Timestamp records (tuples of RECORD fields) -> bytes. Agents forward the records of earlier stages
    as bytes, unparsed, and append their own: only the host unpacks them."""
    return b"".join(RECORD.pack(*r) for r in records)


def unpack_records(blob):
    """Packed timestamp records -> list of 8-tuples (stage, partition id, source id, flags, t_recv,
    t_compute_start, t_compute_end, t_send; times in ns). Raises struct.error when the length is not a
    multiple of 40 bytes."""
    return list(RECORD.iter_unpack(blob))


def json_object(payload, what="control message"):
    """A control message's JSON object ({} when empty): UTF-8, JSON, an object, or ProtocolError naming what
    came (a board's PONG, ERROR or HELLO is untrusted input)."""
    try:
        d = json.loads(bytes(payload).decode() or "{}")
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ProtocolError("%s is not JSON (%s: %s)" % (what, type(e).__name__, str(e)[:80]))
    if not isinstance(d, dict):
        raise ProtocolError("%s is not a JSON object (a %s)" % (what, type(d).__name__))
    return d


def send_parts(sock, parts, total):
    """Send the concatenation of `parts` (bytes-like, e.g. header, records, a DMA buffer's memoryview; `total`
    bytes in all) with one sendmsg, without joining them; the rest with sendall if the socket took less."""
    sent = sock.sendmsg(parts)
    if sent < total:
        sock.sendall(b"".join(bytes(p) for p in parts)[sent:])


def set_socket_options(sock):
    """Set TCP_NODELAY on `sock` (a frame goes out at once, not batched by Nagle's algorithm)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Reader:
    """Buffered exact reads from a socket: usually one recv per message instead of one per field.

    max_payload / max_records bound what a header may announce: checked before any buffer grows, so a
    header cannot make the reader allocate more than a message of this connection can legitimately need."""

    def __init__(self, sock, size=1 << 16, max_payload=MAX_CONTROL_PAYLOAD, max_records=MAX_RECORDS):
        self.sock = sock
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)  # kept: a recv_into per message, no new view each time
        self.start = 0
        self.end = 0
        self.max_payload = max_payload
        self.max_records = max_records
        self.expect_records = None  # records per FRAME on this connection, once one came (see message_into)
        self.scatter = None  # (destination, records end, reader view, buffers of the last recvmsg_into, records view)

    def read(self, n):
        """Exactly `n` bytes (a bytearray copy) from the socket, buffered. Raises EOFError when the peer closes
        first, socket.timeout/OSError as recv does."""
        if self.end - self.start < n:
            self._fill(n)
        out = self.buf[self.start:self.start + n]
        self.start += n
        return out

    def _fill(self, n):
        """Make at least n bytes available from self.start (compacts the buffer, grows it if needed)."""
        start, end = self.start, self.end
        if start == end:  # all consumed (a lone frame's usual case): read from the buffer's beginning
            self.start = self.end = end = 0
        elif start:
            end -= start
            self.buf[:end] = self.buf[start:start + end]
            self.start, self.end = 0, end
        if len(self.buf) < n:  # a new, larger buffer: views handed out on the old one stay valid
            grown = bytearray(max(n, 2 * len(self.buf)))
            grown[:end] = self.buf[:end]
            self.buf, self.view = grown, memoryview(grown)
        view, recv_into = self.view, self.sock.recv_into
        while end < n:  # state stays consistent if recv times out (host-side readers use timeouts)
            k = recv_into(view[end:] if end else view)
            if not k:
                raise EOFError("connection closed by peer")
            end += k
            self.end = end

    def message(self, copy=True):
        """-> (type, frame, stage, part, records (packed bytes), payload bytearray).
        copy=False: records and payload are memoryviews of the receive buffer, valid only until the next
        call (the agent's per-frame path, which forwards or decodes them before reading on).
        Raises ProtocolError for a header that is not ours or announces more than this reader allows."""
        s, end = self.start, self.end
        if s == end:  # nothing buffered (a lone frame's usual case): one recv at the buffer's beginning
            end = self.sock.recv_into(self.view)
            if not end:
                raise EOFError("connection closed by peer")
            s = self.start = 0
            self.end = end
        if end - s < 24:
            self._fill(24)
            s, end = 0, self.end
        buf = self.buf
        magic, version, mtype, frame, stage, part, length, nrec = HEADER.unpack_from(buf, s)
        if magic != MAGIC or version != VERSION or length > self.max_payload or nrec > self.max_records:
            raise self._bad_header(magic, version, length, nrec)
        p = s + 24 + 40 * nrec
        e = p + length
        if end < e:
            self._fill(e - s)  # compacts: the message now starts at 0
            buf, p, e, s = self.buf, p - s, e - s, 0
        self.start = e
        if copy:
            return mtype, frame, stage, part, buf[s + 24:p], buf[p:e]
        view = self.view
        return mtype, frame, stage, part, view[s + 24:p], view[p:e]

    def message_into(self, dest):
        """message(copy=False), with a FRAME's payload placed in `dest` (a writable byte memoryview, e.g. of a
        DMA buffer) when its length is len(dest): then the returned payload is `dest` itself. Other messages,
        and a FRAME of another length (the caller refuses it), come back as message(copy=False) gives them;
        `dest` may then hold garbage (the caller must not have lent it to anyone: it is written either way).

        Once this connection carried a frame, the next frame is expected to look alike (same number of
        records, payload of len(dest)): a single recvmsg_into scatters the header and records into this
        reader's buffer, the payload into `dest`, and whatever follows after them, so the payload is received
        where it is used, not copied. Anything else (a control message, other record count, several messages
        already buffered) is put back in order in this reader's buffer and parsed as message() does, header
        checks included; a right-sized payload is then copied into `dest` once."""
        n = len(dest)
        nrec = self.expect_records
        if nrec is None or self.start != self.end:  # nothing learnt yet, or bytes already buffered
            return self._into(self.message(False), dest)
        p = 24 + 40 * nrec
        view = self.view
        sc = self.scatter
        if sc is None or sc[0] is not dest or sc[1] != p or sc[2] is not view:
            if len(self.buf) < p + 4096:  # room for the header, records and a following message's start
                self.buf = bytearray(p + (1 << 16))
                self.view = view = memoryview(self.buf)
            # the buffer list and the records' view, kept while the destination and layout stay (a slot is
            # usually reused)
            sc = self.scatter = (dest, p, view, [view[:p], dest, view[p:]], view[24:p])
        got = self.sock.recvmsg_into(sc[3])[0]
        if not got:
            raise EOFError("connection closed by peer")
        if got >= 24:
            magic, version, mtype, frame, stage, part, length, k = HEADER.unpack_from(self.buf, 0)
            if mtype == FRAME_TYPE and length == n and k == nrec and magic == MAGIC and version == VERSION:
                if got < p + n:  # the rest of the records, then of the payload: received in place
                    self.start = self.end = 0
                    self._exact(view, got, p)
                    self._exact(dest, max(got - p, 0), n)
                else:  # a following message's start sits in the buffer behind the records
                    self.start, self.end = p, got - n
                    if self.start == self.end:
                        self.start = self.end = 0
                return mtype, frame, stage, part, sc[4], dest
        # not the expected layout: put the bytes in order (records part, payload part, the rest) and parse
        in_dest = min(max(got - p, 0), n)
        tail = max(got - p - n, 0)
        if tail:
            if len(self.buf) < p + n + tail:
                grown = bytearray(p + n + tail + (1 << 16))
                grown[:p + tail] = self.buf[:p + tail]
                self.buf, self.view = grown, memoryview(grown)
            self.buf[p + n:p + n + tail] = self.buf[p:p + tail]  # the slice on the right is a copy: no overlap
        if in_dest:
            self.buf[p:p + in_dest] = dest[:in_dest]
        self.start, self.end = 0, got
        return self._into(self.message(False), dest)

    def _exact(self, view, have, n):
        """Receive into view[have:n] until it is full; EOFError if the peer closes first."""
        recv_into = self.sock.recv_into
        while have < n:
            k = recv_into(view[have:n])
            if not k:
                raise EOFError("connection closed by peer")
            have += k

    def _into(self, m, dest):
        if m[0] == FRAME_TYPE:
            self.expect_records = len(m[4]) // 40
            if len(m[5]) == len(dest):
                dest[:] = m[5]
                return m[:5] + (dest,)
        return m

    def _bad_header(self, magic, version, length, nrec):
        if magic != MAGIC or version != VERSION:
            return ProtocolError("bad magic/version %r/%r: the peer is not a splitrack agent of wire version %d"
                                 % (bytes(magic), version, VERSION))
        return ProtocolError("header announces %d payload bytes and %d records (this connection allows %d and %d):"
                             " refusing" % (length, nrec, self.max_payload, self.max_records))
