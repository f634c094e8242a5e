"""A blocking handle on a labgrid coordinator, built on labgrid's own `ClientSession` (gRPC).

labgrid's client is asyncio; splitrack's callers (the CLI, the pytest plugin, a lease's refresher) are plain
threads. `LabClient` runs one event loop in a daemon thread and hands each call to it, so a pytest session
keeps its reservations fresh while the tests run. The session's view of places and resources is labgrid's:
`ClientSession.places` and `.resources`, kept current by the coordinator's update stream.

The client's name (what labgrid shows as "acquired by") is `HOST/USER+splitrack-PID-XXXX`: one slash as
labgrid-client expects, and unique per process, so that the reservations of two pytest sessions (or two xdist
workers) of one user on one host are told apart by the coordinator's owner check.
"""
from __future__ import annotations

import asyncio
import os
import re
import secrets
import threading
from typing import Dict, List, Optional

from splitting.errors import UserError

_ADDRESS_RE = re.compile(r"^[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$")


class LabError(UserError):
    """The coordinator is unreachable or refused a request; the message says which and what to do."""


def check_address(address: str, where: str = "coordinator") -> str:
    """HOST:PORT as labgrid takes it; anything else is refused here, not deep inside gRPC."""
    if not isinstance(address, str) or not _ADDRESS_RE.match(address.strip()):
        raise LabError(f"{where}: {address!r} is not HOST:PORT (e.g. 127.0.0.1:20408)")
    port = int(address.rsplit(":", 1)[1])
    if not 1 <= port <= 65535:
        raise LabError(f"{where}: port {port} must be 1..65535")
    return address.strip()


class LabClient:
    """One connection to a labgrid coordinator. Blocking methods; safe to call from any thread.

    Raises LabError when the coordinator cannot be reached within `timeout` seconds or refuses a request.
    """

    def __init__(self, address: str, timeout: float = 10.0):
        from labgrid.remote.client import ClientSession

        self.address = check_address(address)
        self.timeout = timeout
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="labgrid-client", daemon=True)
        self._thread.start()
        tag = f"splitrack-{os.getpid()}-{secrets.token_hex(3)}"

        class _Session(ClientSession):
            def getuser(self):  # unique per client: see the module docstring
                return f"{super().getuser()}+{tag}"

            def __attrs_post_init__(self):
                super().__attrs_post_init__()
                # gRPC shares one TCP connection between the channels of a process, and the coordinator
                # knows a client by its connection: a channel of its own, or two clients of one process
                # would be one peer to the coordinator (which refuses the second)
                import grpc
                from labgrid.remote.generated import labgrid_coordinator_pb2_grpc

                self.channel = grpc.aio.insecure_channel(target=self.address, options=[
                    ("grpc.keepalive_time_ms", 7500), ("grpc.keepalive_timeout_ms", 10000),
                    ("grpc.http2.ping_timeout_ms", 10000), ("grpc.http2.max_pings_without_data", 0),
                    ("grpc.use_local_subchannel_pool", 1)])
                self.stub = labgrid_coordinator_pb2_grpc.CoordinatorStub(self.channel)

        async def start():
            s = _Session(self.address, self.loop)
            await s.start()
            return s

        try:
            self.session = self._run(start(), "connect")
        except Exception:
            self._stop_loop()
            raise
        self.name = f"{self.session.gethostname()}/{self.session.getuser()}"

    # --- plumbing -----------------------------------------------------------------------------------
    def _run(self, coro, what: str, timeout: Optional[float] = None):
        import grpc
        from labgrid.remote.client import Error as LgError

        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout or self.timeout)
        except TimeoutError:
            fut.cancel()
            raise LabError(f"labgrid coordinator {self.address}: no answer to {what} within "
                           f"{timeout or self.timeout:.0f} s; is `labgrid-coordinator --listen {self.address}` "
                           "running and reachable?") from None
        except grpc.aio.AioRpcError as e:
            raise LabError(f"labgrid coordinator {self.address}: {what}: {e.details()}") from None
        except LgError as e:
            raise LabError(f"labgrid coordinator {self.address}: {what}: {e}") from None

    def call(self, method: str, request, what: str = ""):
        """Send one gRPC request (`labgrid_coordinator_pb2.<Method>Request`), wait for the coordinator to
        publish its effect to this session, and return the response."""
        async def go():
            resp = await getattr(self.session.stub, method)(request)
            await self.session.sync_with_coordinator()
            return resp
        return self._run(go(), what or method)

    def sync(self) -> None:
        """Wait until this session's view includes every update the coordinator has sent so far."""
        self._run(self.session.sync_with_coordinator(), "sync")

    # --- views (labgrid's own objects) ---------------------------------------------------------------
    def places(self) -> Dict[str, object]:
        """name -> labgrid.remote.common.Place (copy of the session's view, current after sync())."""
        async def get():
            return dict(self.session.places)
        return self._run(get(), "places")

    def resources(self) -> Dict[str, Dict[str, Dict[str, object]]]:
        """exporter -> group -> resource name -> labgrid ResourceEntry."""
        async def get():
            return {e: {g: dict(r) for g, r in groups.items()} for e, groups in self.session.resources.items()}
        return self._run(get(), "resources")

    def reservations(self) -> List[object]:
        """The coordinator's current reservations (labgrid Reservation objects: owner, token, created, ...).
        Raises LabError when the coordinator does not answer or refuses."""
        from labgrid.remote.common import Reservation
        from labgrid.remote.generated import labgrid_coordinator_pb2 as pb

        resp = self.call("GetReservations", pb.GetReservationsRequest(), "list reservations")
        return [Reservation.from_pb2(r) for r in resp.reservations]

    def close(self) -> None:
        """Disconnect from the coordinator (errors on a dead connection ignored) and stop the event loop thread."""
        try:
            self._run(self.session.stop(), "disconnect", timeout=5)
            self._run(self.session.close(), "close", timeout=5)
        except Exception:  # closing a dead connection: nothing left to tell anyone
            pass
        self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
