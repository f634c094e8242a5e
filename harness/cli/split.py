"""`splitrack split model.keras --at L1,L2 --neurons L:k --inputs L:k -o plan/`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from splitting.errors import UserError
from splitting.report import table


def _pairs(text: str, flag: str) -> dict:
    out = {}
    for item in filter(None, (t.strip() for t in (text or "").split(","))):
        name, sep, k = item.rpartition(":")
        if not sep or not name or not k.isdigit():
            raise UserError(f"{flag} {item!r}: write LAYER:K, e.g. {flag} dense_1:2")
        out[name] = int(k)
    return out


def refuse_overwrite(folder, new_hash: str, force: bool) -> None:
    """Raise UserError when `folder` holds something other than the plan `new_hash` and `force` is not set:
    a different plan (its verification, wiring and runs would then describe another model), or files that
    are not a plan. Writing the same plan again is allowed (it changes nothing)."""
    folder = Path(folder)
    if force or not folder.exists():
        return
    if not folder.is_dir():
        raise UserError(f"{folder} is a file; give a folder for the plan")
    f = folder / "plan.json"
    if f.exists() or f.is_symlink():
        from splitting.untrusted import read_json

        try:
            old = read_json(f, str(f), error=ValueError).get("hash")
        except (ValueError, OSError, AttributeError):
            old = None
        if old == new_hash:
            return
        raise UserError(f"{folder} holds another plan ({old or 'unreadable plan.json'}, this one is {new_hash}); "
                        "give another folder, or --force to replace it")
    if any(folder.iterdir()):
        raise UserError(f"{folder} is not empty and holds no plan; give another folder, or --force to write into it")


def configure(p: argparse.ArgumentParser) -> None:
    """Add the arguments of `splitrack split`: model, --at, --neurons, --inputs, precision, reuse, strategy,
    -o, --force."""
    p.add_argument("model", help="Keras model file (.keras)")
    p.add_argument("--at", default="", help="cut after these layers (comma separated)")
    p.add_argument("--neurons", default="", help="neuron splits LAYER:K[,LAYER:K] (Dense units, Conv2D filters)")
    p.add_argument("--inputs", default="", help="input splits LAYER:K[,LAYER:K] (Dense inputs, Conv2D channels)")
    p.add_argument("--precision", default="ap_fixed<16,6>", help="fixed-point type of every layer and link")
    p.add_argument("--reuse", type=int, default=1, help="hls4ml reuse factor (default 1)")
    p.add_argument("--strategy", default="Latency", choices=["Latency", "Resource"],
                   help="hls4ml strategy of every layer (default Latency; Resource shares multipliers, with --reuse)")
    p.add_argument("-o", "--out", required=True, help="plan folder to write")
    p.add_argument("--force", action="store_true", help="replace a different plan already in the -o folder")


def run(args) -> int:
    """Cut the model as asked, check that every partition converts with hls4ml, write the plan folder and
    print its partitions and links. Returns 0; a bad cut, option or folder raises UserError (exit status 2)."""
    from splitting.graph import load_model
    from splitting.split import split_model, write_plan

    at = [t.strip() for t in args.at.split(",") if t.strip()]
    neurons, inputs = _pairs(args.neurons, "--neurons"), _pairs(args.inputs, "--inputs")
    if args.reuse < 1:
        raise UserError("--reuse must be at least 1")
    model = load_model(args.model)
    plan, models = split_model(model, at=at, neurons=neurons, inputs=inputs, precision=args.precision,
                               reuse_factor=args.reuse, strategy=args.strategy)
    refuse_overwrite(args.out, plan.hash, args.force)
    from splitting.hls_support import check_plan

    # know before writing: every partition (and the whole-model reference) converts with hls4ml
    check_plan(plan, models, progress=lambda m: print(f"[split] {m}", file=sys.stderr, flush=True))
    path = write_plan(plan, models, Path(args.out))
    rows = [[p.name, p.stage, p.kind, ",".join(p.layers), "x".join(map(str, p.input_shape)),
             "x".join(map(str, p.output_shape))] for p in plan.ordered_partitions()]
    print(table(["partition", "stage", "kind", "layers", "in", "out"], rows))
    links = [[f"{c.src}->{c.dst}", "x".join(map(str, c.shape)), c.dtype, c.combine, c.packing.beats,
              hex(c.packing.last_tkeep), c.payload_bytes] for c in plan.links]
    print()
    print(table(["link", "shape", "type", "combine", "beats", "last tkeep", "bytes"], links))
    print(f"\nplan {plan.hash} written to {path}")
    return 0
