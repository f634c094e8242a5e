"""`splitrack lab export|places|status|check`: a shared rack through labgrid (coordinator, exporters, places).

    splitrack lab export boards.toml -o exporter.yaml            # one resource group per board
    labgrid-exporter -c HOST:PORT --name rackhost exporter.yaml   # labgrid's own program, on the rack host
    splitrack lab places boards.toml --coordinator HOST:PORT      # one place per board, matched and tagged
    splitrack lab status --coordinator HOST:PORT                  # who holds each board, since when, health
    splitrack lab check lab.toml                                  # health-check free boards, tag the bad ones
"""
from __future__ import annotations

import argparse
import time
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional


def configure(p: argparse.ArgumentParser) -> None:
    """Add the actions of `splitrack lab` (export, places, status, check) and their arguments."""
    sub = p.add_subparsers(dest="lab_command", metavar="ACTION", required=True)
    ex = sub.add_parser("export", help="write a labgrid exporter configuration from a rack file")
    ex.add_argument("rack", type=Path, help="rack file listing boards (boards.toml)")
    ex.add_argument("-o", "--out", type=Path, default=Path("exporter.yaml"), help="default exporter.yaml")
    pl = sub.add_parser("places", help="create or update one labgrid place per board (idempotent)")
    pl.add_argument("rack", type=Path, help="rack file listing boards (boards.toml)")
    pl.add_argument("--coordinator", required=True, metavar="HOST:PORT", help="labgrid coordinator to create them on")
    st = sub.add_parser("status", help="every board of the coordinator: who holds it, since when, health")
    st.add_argument("--coordinator", required=True, metavar="HOST:PORT", help="labgrid coordinator to ask")
    st.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                    help="only places with this tag (repeatable), e.g. --tag rack=lab")
    ck = sub.add_parser("check", help="health-check a shared rack's free boards and tag them in labgrid")
    ck.add_argument("rack", type=Path, help="rack file with [rack] coordinator = \"HOST:PORT\"")


def run(args) -> int:
    """Run the lab action: write the exporter configuration, create the places, print the status, or
    health-check and tag the free boards. Returns 0, or 1 when `check` finds a bad board; LabError (e.g.
    the coordinator unreachable) gives exit status 2."""
    import logging

    from harness.rack.lab_client import LabClient, LabError
    from harness.rack.rackfile import load_rack

    # labgrid's client logs a lost coordinator on the root logger; the error that follows says it in one line
    logging.getLogger().addHandler(logging.NullHandler())

    if args.lab_command == "export":
        from harness.rack.lab_export import exporter_yaml

        rack = _board_rack(args.rack)
        text, notes = exporter_yaml(rack)
        args.out.write_text(text)
        for n in notes:
            print(f"note: {n}")
        print(f"wrote {args.out}: {len(rack.boards)} resource group(s) for rack {rack.name}; run it on the rack "
              f"host with: labgrid-exporter -c HOST:PORT --name {rack.name}-host {args.out}")
        return 0
    if args.lab_command == "places":
        from harness.rack.lab_export import apply_places

        rack = _board_rack(args.rack)
        with LabClient(args.coordinator) as client:
            apply_places(client, rack, progress=lambda s: print(s, flush=True))
        print(f"{len(rack.boards)} place(s) of rack {rack.name} on {args.coordinator}")
        return 0
    if args.lab_command == "status":
        tags = {}
        for t in args.tag:
            k, sep, v = t.partition("=")
            if not sep or not k:
                raise LabError(f"--tag {t!r}: give KEY=VALUE")
            tags[k] = v
        with LabClient(args.coordinator) as client:
            print(status_text(client, tags))
        return 0
    if args.lab_command == "check":
        from harness.rack.health import check_rack
        from harness.rack.lab_lease import check_and_tag
        from harness.rack.rackfile import Rack

        rack = load_rack(args.rack)
        if not rack.lab:
            raise LabError(f"{args.rack}: not a shared rack ([rack] has no coordinator); use `splitrack rack check`")
        with LabClient(rack.lab.coordinator) as client:
            boards, health = check_and_tag(client, rack, lambda bs: check_rack(Rack(rack.name, bs)),
                                           progress=lambda s: print(s, flush=True))
            for h in health.values():
                print(h.line())
            print(status_text(client, rack.lab.tags))
        return 1 if any(not h.ok for h in health.values()) else 0
    return 2


def _board_rack(path: Path):
    from harness.rack.lab_client import LabError
    from harness.rack.rackfile import parse_rack

    path = Path(path).expanduser()
    if not path.is_file():
        raise LabError(f"{path}: rack file not found")
    rack = parse_rack(path.read_text(), path.resolve())  # keys live on the runners, not here: not checked
    if rack.lab:
        raise LabError(f"{path}: names a coordinator; export and places read the rack file that lists the boards")
    return rack


def _ago(t: float, now: float) -> str:
    s = max(0, int(now - t))
    when = datetime.fromtimestamp(t).strftime("%H:%M:%S")
    return f"{when} ({s // 60}m{s % 60:02d}s)" if s >= 60 else f"{when} ({s}s)"


def status_rows(client, tags: Optional[Dict[str, str]] = None) -> List[Dict[str, str]]:
    """One row per place whose tags include `tags`: place, board, ssh endpoint, holder, since, health."""
    from harness.rack.lab_export import TAG_BOARD, TAG_HEALTH, TAG_REASON, TAG_SINCE
    from harness.rack.lab_lease import tags_match, network_services

    client.sync()
    places = client.places()
    resources = client.resources()
    owners = {r.token: r for r in client.reservations()}
    now = time.time()
    rows = []
    for name, p in sorted(places.items()):
        if not tags_match(p.tags, tags or {}):
            continue
        ssh = network_services(resources, p).get("ssh")
        res = owners.get(p.reservation) if p.reservation else None
        if p.acquired:
            holder = p.acquired
            since = p.tags.get(TAG_SINCE, "")
            t = int(since) if since.isdigit() else (res.created if res else p.changed)
            when = _ago(t, now)
        elif res:
            holder, when = f"reserved for {res.owner}", _ago(res.created, now)
        else:
            holder, when = "-", "-"
        health = p.tags.get(TAG_HEALTH, "ok")
        if health != "ok":
            health = f"{health}: {p.tags.get(TAG_REASON, '')}"
        if ssh is None:
            endpoint = "(no ssh resource: exporter down?)"
        else:
            endpoint = f"{ssh.get('username')}@{ssh.get('address')}:{ssh.get('port')}"
            if not ssh.get("avail", True):
                endpoint += " (unavailable)"
        rows.append({"place": name, "board": p.tags.get(TAG_BOARD, "?"), "ssh": endpoint, "held by": holder,
                     "since": when, "health": health})
    return rows


def status_text(client, tags: Optional[Dict[str, str]] = None) -> str:
    """The status table as text: a header (coordinator, tags, boards, held, unhealthy), then one line per
    place from status_rows."""
    rows = status_rows(client, tags)
    held = sum(r["held by"] != "-" for r in rows)
    bad = sum(r["health"] != "ok" for r in rows)
    head = (f"coordinator {client.address}" + (f", tags {' '.join(f'{k}={v}' for k, v in tags.items())}" if tags else "")
            + f": {len(rows)} board(s), {held} held, {bad} unhealthy")
    if not rows:
        return head + "\n(no places; create them with `splitrack lab places boards.toml --coordinator HOST:PORT`)"
    cols = ["place", "board", "ssh", "held by", "since", "health"]
    width = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols[:-1]}
    lines = [head, "  ".join(c.ljust(width[c]) for c in cols[:-1]) + "  health"]
    for r in rows:
        lines.append("  ".join(r[c].ljust(width[c]) for c in cols[:-1]) + "  " + r["health"])
    return "\n".join(lines)
