"""boards.toml -> what labgrid holds: an exporter configuration and one place per board.

`boards.toml` stays the one inventory; both are generated from it.

Each board becomes one resource group of the exporter (group name = board name) with two labgrid
`NetworkService` resources: `ssh` (address, username, SSH port) and `agent` (the port the board's agent takes
frames on), and a power resource where the board's `power_cycle` command is one labgrid has a resource for
(today: PDUDaemon's `pduclient`, which becomes a `PDUDaemonPort`). A command labgrid cannot model stays in
boards.toml; `lab export` says so.

Each board's place (`RACK-BOARD`) matches `*/BOARD/*` and is tagged with the rack, the board kind, the board
name and the PYNQ version; splitrack adds `health` (ok|bad) and, on a bad board, `health_reason`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from harness.rack.rackfile import Board, Rack

# Tag keys (labgrid: [a-z][a-z0-9_]+). Reservations filter on the place's tags.
TAG_RACK, TAG_KIND, TAG_BOARD, TAG_PYNQ = "rack", "kind", "board", "pynq_version"
TAG_HEALTH, TAG_REASON = "health", "health_reason"
TAG_ALIVE, TAG_SINCE = "lease_alive", "lease_since"  # written by the holder of a lease (lab_lease)


@dataclass
class PlaceSpec:
    """What `lab places` makes a place look like."""

    name: str
    tags: Dict[str, str]
    matches: List[str] = field(default_factory=list)  # labgrid match patterns exporter/group/cls[/name]


def place_name(rack_name: str, board_name: str) -> str:
    """The labgrid place of a board: '<rack name>-<board name>'."""
    return f"{rack_name}-{board_name}"


def pdudaemon_port(cmd: Optional[List[str]]) -> Optional[Tuple[str, str, int]]:
    """(host, pdu, index) when `cmd` is a pduclient call labgrid's PDUDaemonPort describes, else None.

    pduclient --daemon HOST --hostname PDU --port N --command reboot
    """
    if not cmd or cmd[0].rsplit("/", 1)[-1] != "pduclient":
        return None
    opts: Dict[str, str] = {}
    args = cmd[1:]
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("--") and "=" in a:
            k, v = a[2:].split("=", 1)
            opts[k] = v
        elif a.startswith("--") and i + 1 < len(args):
            opts[a[2:]] = args[i + 1]
            i += 1
        i += 1
    try:
        return opts["daemon"], opts["hostname"], int(opts["port"])
    except (KeyError, ValueError):
        return None


def board_group(b: Board) -> Dict[str, Dict[str, object]]:
    """The exporter's resource group of one board (labgrid resource name -> parameters with cls)."""
    g: Dict[str, Dict[str, object]] = {
        "ssh": {"cls": "NetworkService", "address": b.host, "username": b.user, "port": b.port},
        "agent": {"cls": "NetworkService", "address": b.host, "username": b.user, "port": b.data_port},
    }
    pdu = pdudaemon_port(b.power_cycle)
    if pdu:
        g["power"] = {"cls": "PDUDaemonPort", "host": pdu[0], "pdu": pdu[1], "index": pdu[2]}
    return g


def _yaml_scalar(v: object) -> str:
    if isinstance(v, bool) or v is None:
        raise TypeError(v)
    if isinstance(v, int):
        return str(v)
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def exporter_yaml(rack: Rack) -> Tuple[str, List[str]]:
    """(labgrid exporter configuration, notes). The configuration is YAML that labgrid renders through
    jinja2 first, so comments use `##` (a line starting with `#` is a jinja statement there)."""
    out = [f"## labgrid exporter configuration for rack {rack.name}, written by `splitrack lab export`",
           f"## from {rack.path}. Run on the rack host: labgrid-exporter -c HOST:PORT --name NAME THIS_FILE"]
    notes: List[str] = []
    for b in rack.boards:
        out.append(f"{_yaml_scalar(b.name)}:")
        out.append(f"  location: {_yaml_scalar(f'rack {rack.name}')}")
        for res, params in board_group(b).items():
            out.append(f"  {res}:")
            for k, v in params.items():
                out.append(f"    {k}: {_yaml_scalar(v)}")
        if b.power_cycle and not pdudaemon_port(b.power_cycle):
            notes.append(f"{b.name}: power_cycle `{' '.join(b.power_cycle)}` has no labgrid power resource "
                         "(only pduclient maps to PDUDaemonPort); it stays in the rack file")
    return "\n".join(out) + "\n", notes


def place_specs(rack: Rack) -> List[PlaceSpec]:
    """One place per board: matched to the board's resource group on any exporter, tagged."""
    specs = []
    for b in rack.boards:
        tags = {TAG_RACK: rack.name, TAG_KIND: b.kind, TAG_BOARD: b.name}
        if b.pynq_version:  # a tag only for what the rack file states
            tags[TAG_PYNQ] = b.pynq_version
        specs.append(PlaceSpec(place_name(rack.name, b.name), tags, [f"*/{b.name}/*"]))
    return specs


def apply_places(client, rack: Rack, progress=print) -> List[str]:
    """Create or update the places of `rack` on the coordinator of `client` (a LabClient).

    Idempotent: a place that exists is updated (tags set, missing matches added, stale matches removed),
    never duplicated. A place's health tags are left as they are (health belongs to the health check), and a
    new place starts healthy. Returns one line per place saying what changed.
    """
    from labgrid.remote.generated import labgrid_coordinator_pb2 as pb

    client.sync()
    existing = client.places()
    lines = []
    for spec in place_specs(rack):
        changes = []
        place = existing.get(spec.name)
        if place is None:
            client.call("AddPlace", pb.AddPlaceRequest(name=spec.name), f"add place {spec.name}")
            changes.append("created")
            old_tags, old_matches = {}, []
        else:
            old_tags = dict(place.tags)
            old_matches = [repr(m) for m in place.matches]  # repr: the pattern without " -> rename"
        want = dict(spec.tags)
        if TAG_HEALTH not in old_tags:
            want[TAG_HEALTH] = "ok"
        diff = {k: v for k, v in want.items() if old_tags.get(k) != v}
        if diff:
            client.call("SetPlaceTags", pb.SetPlaceTagsRequest(placename=spec.name, tags=diff), f"tag {spec.name}")
            changes.append("tags " + ", ".join(f"{k}={v}" for k, v in sorted(diff.items())))
        for m in spec.matches:
            if m not in old_matches:
                client.call("AddPlaceMatch", pb.AddPlaceMatchRequest(placename=spec.name, pattern=m),
                            f"match {spec.name}")
                changes.append(f"match {m}")
        for m in old_matches:
            if m not in spec.matches:
                client.call("DeletePlaceMatch", pb.DeletePlaceMatchRequest(placename=spec.name, pattern=m),
                            f"unmatch {spec.name}")
                changes.append(f"removed match {m}")
        line = f"{spec.name}: " + ("; ".join(changes) if changes else "up to date")
        lines.append(line)
        if progress:
            progress(line)
    return lines
