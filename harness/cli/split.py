"""`splitrack split model.keras --at L1,L2 --neurons L:k --inputs L:k -o plan/`."""
from __future__ import annotations

import argparse
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


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="Keras model file (.keras)")
    p.add_argument("--at", default="", help="cut after these layers (comma separated)")
    p.add_argument("--neurons", default="", help="neuron splits LAYER:K[,LAYER:K] (Dense units, Conv2D filters)")
    p.add_argument("--inputs", default="", help="input splits LAYER:K[,LAYER:K] (Dense inputs, Conv2D channels)")
    p.add_argument("--precision", default="ap_fixed<16,6>", help="fixed-point type of every layer and link")
    p.add_argument("--reuse", type=int, default=1, help="hls4ml reuse factor (default 1)")
    p.add_argument("--strategy", default="Latency", choices=["Latency", "Resource"])
    p.add_argument("-o", "--out", required=True, help="plan folder to write")


def run(args) -> int:
    from splitting.graph import load_model
    from splitting.split import split_model, write_plan

    at = [t.strip() for t in args.at.split(",") if t.strip()]
    neurons, inputs = _pairs(args.neurons, "--neurons"), _pairs(args.inputs, "--inputs")
    if args.reuse < 1:
        raise UserError("--reuse must be at least 1")
    model = load_model(args.model)
    plan, models = split_model(model, at=at, neurons=neurons, inputs=inputs, precision=args.precision,
                               reuse_factor=args.reuse, strategy=args.strategy)
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
