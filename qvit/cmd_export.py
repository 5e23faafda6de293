"""`qvit export`: a checkpoint (or a random-init named architecture) -> the integer model file.

qvit export runs/x/checkpoint --out model.qvit.safetensors
qvit export --arch deit_tiny_patch16_224 --bits 2 --random --out model.qvit.safetensors
qvit export runs/x/checkpoint --onnx model.onnx          (QDQ ONNX; issue #7)
"""

from __future__ import annotations

import argparse
import os

from qvit_edge.clikit import UserError, int_range, nonneg_int, writable_file_path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", help="checkpoint directory written by `qvit train`")
    # checked while parsing, before a checkpoint is loaded or anything exported
    p.add_argument("--out", type=writable_file_path, help="integer model to write (*.qvit.safetensors)")
    p.add_argument(
        "--onnx",
        type=writable_file_path,
        help="also (or only) write a QDQ ONNX model of the quantized network",
    )
    p.add_argument(
        "--arch", help="with --random: a named architecture (see `qvit train --help` / qvit.models)"
    )
    p.add_argument(
        "--bits", type=int_range(1, 8), help="with --random: weight and activation bits of the blocks (1-8)"
    )
    p.add_argument(
        "--random", action="store_true", help="random-init weights (no pretrained weights exist here)"
    )
    p.add_argument("--no-irm", action="store_true", help="with --random: without the IRM")
    p.add_argument(
        "--seed",
        type=int_range(0, 2**32 - 1),
        default=0,
        help="with --random: seed of weights and quantizer init",
    )
    p.add_argument(
        "--check",
        type=nonneg_int,
        metavar="N",
        default=0,
        help="then run PyTorch and the integer reference on N images of the checkpoint's test set "
        "(random images with --random) and print how well they agree",
    )


def run(args) -> int:
    if not args.out and not args.onnx and args.check <= 0:
        raise UserError("nothing to do: give --out FILE (integer model), --onnx FILE and/or --check N")
    for path in (args.out, args.onnx):
        if path and os.path.isdir(path):
            raise UserError(f"{path} is a directory; give a file name")
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise UserError(f"cannot write {path}: no such directory {os.path.dirname(path)}")
    if args.random:
        if args.checkpoint:
            raise UserError("give either a checkpoint or --random --arch NAME --bits B, not both")
        if not args.arch or args.bits is None:
            raise UserError("--random needs --arch NAME and --bits B")
        if not 1 <= args.bits <= 8:
            raise UserError(f"--bits must be 1..8, got {args.bits}")
    elif not args.checkpoint:
        raise UserError("give a checkpoint directory, or --random --arch NAME --bits B")
    elif args.arch or args.bits is not None:
        raise UserError("--arch and --bits only go with --random (a checkpoint knows its architecture)")

    from qvit import export

    config = {}
    if args.random:
        im, model = export.export_random(args.arch, args.bits, seed=args.seed, irm=not args.no_irm)
    else:
        from qvit.checkpoint import load_model

        model, config = load_model(args.checkpoint)
        im = export.export_checkpoint(args.checkpoint, model=model)
    if args.out:
        im.save(args.out)
        size = os.path.getsize(args.out)
        b = im.config["bits"]
        print(
            f"wrote {args.out}: {im.config['arch']} W{b['weight']}A{b['act']} ({im.family}), "
            f"{len(im.graph)} ops, "
            f"{size / 1e6:.2f} MB, sha256 {im.digest()[:16]}"
        )
    om = None
    if args.onnx:
        from qvit import export_onnx

        om = export_onnx.export_onnx(im, args.onnx)
        print(
            f"wrote {args.onnx}: QDQ ONNX (opset {om.opset_import[0].version}) of {im.config['arch']}, "
            f"{os.path.getsize(args.onnx) / 1e6:.2f} MB"
        )
    if args.check > 0:
        x, y = export.check_images(config, model, args.check)
        r = export.check_agreement(model, im, x, y, onnx_model=om)
        acc = f" (PyTorch top-1 {100 * r['torch_top1']:.2f} %)" if y is not None else ""
        print(f"check on {r['images']} images{acc}, against PyTorch:")
        for name in ("reference", "onnxruntime"):
            if name in r:
                c = r[name]
                top1 = f", top-1 {100 * c['top1']:.2f} %" if y is not None else ""
                print(
                    f"  {name}: top-1 agreement {100 * c['top1_agreement']:.2f} %, "
                    f"max |logit diff| {c['max_abs_logit_diff']:.3g} "
                    f"({100 * c['max_rel_logit_diff']:.3g} % of the largest |logit|){top1}"
                )
    return 0
