"""`qvit ops --model NAME --bits B`: FLOPs, BOPs, OPs and the theoretical speed-up over full precision.

    qvit ops --model deit_small_distilled_patch16_224 --bits 4
    qvit ops --model swin_tiny_patch4_window7_224 --bits 2 --json
Convention in qvit/opcount.py (OPs = BOPs/64 + FLOPs, 8-bit patch embedding and head in full).
"""

from __future__ import annotations

import argparse
import json

from qvit_edge.clikit import UserError, int_range

BITS = int_range(1, 8)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="architecture (see `qvit train --list-models`)")
    p.add_argument("--bits", type=BITS, required=True, help="weight and activation bits of the blocks")
    p.add_argument("--w-bits", type=BITS, help="weight bits (overrides --bits)")
    p.add_argument("--a-bits", type=BITS, help="activation bits (overrides --bits)")
    p.add_argument("--embed-bits", type=BITS, default=8)
    p.add_argument("--head-bits", type=BITS, default=8)
    p.add_argument("--layers", action="store_true", help="also list every counted product")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args) -> int:
    for name in ("bits", "w_bits", "a_bits", "embed_bits", "head_bits"):
        v = getattr(args, name)
        if v is not None and not 1 <= v <= 8:
            raise UserError(f"--{name.replace('_', '-')} must be 1..8, got {v}")
    import torch

    from qvit import opcount
    from qvit.models import create_model

    torch.manual_seed(0)
    try:
        model = create_model(
            args.model,
            bits=args.bits,
            w_bits=args.w_bits,
            a_bits=args.a_bits,
            embed_bits=args.embed_bits,
            head_bits=args.head_bits,
        )
    except ValueError as e:
        raise UserError(str(e)) from None
    r = opcount.count(model)
    q = model.qvit_config.quant
    out = {
        "model": args.model,
        "w_bits": q.w_bits,
        "a_bits": q.a_bits,
        "embed_bits": q.embed_bits,
        "head_bits": q.head_bits,
        "macs_fp": r["macs_fp"],
        "flops": r["flops"],
        "bops": r["bops"],
        "ops": r["ops"],
        "speedup": r["speedup"],
    }
    if args.layers:
        out["layers"] = r["layers"]
    if args.json:
        print(json.dumps(out))
        return 0
    print(
        f"{args.model} W{q.w_bits}A{q.a_bits} (patch embedding {q.embed_bits} bit, head {q.head_bits} bit), "
        f"per image:"
    )
    print(f"  full precision  {r['macs_fp'] / 1e9:8.3f} G MACs (FLOPs)")
    print(f"  FLOPs           {r['flops'] / 1e9:8.3f} G   (products at 8 bits or float)")
    print(f"  BOPs            {r['bops'] / 1e9:8.3f} G   (w_bits * a_bits * MACs of the low-bit products)")
    print(f"  OPs             {r['ops'] / 1e9:8.3f} G   (BOPs / 64 + FLOPs)")
    print(f"  speed-up        {r['speedup']:8.2f} x  (theoretical, over full precision)")
    if args.layers:
        for row in r["layers"]:
            bits = f"W{row['w_bits']}A{row['a_bits']}" if row["w_bits"] else "float"
            print(f"    {row['name']:40s} {row['macs'] / 1e6:10.3f} M MACs  {bits}")
    return 0
