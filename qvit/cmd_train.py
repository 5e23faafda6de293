"""`qvit train`: full-precision training, or QAT of a fully quantized Q-ViT (IRM + DGD) from it.

    qvit train --model deit_tiny_patch4_28 --data fashion-mnist --epochs 30 --out runs/fp
    qvit train --model deit_tiny_patch4_28 --bits 2 --init-from runs/fp/best --teacher runs/fp/best \\
               --data fashion-mnist --epochs 30 --out runs/w2a2
    torchrun --nproc_per_node 2 -m qvit train ...          (DistributedDataParallel)
    qvit train ... --resume                                 (continue a killed run in --out)
"""

from __future__ import annotations

import argparse
import math
import os

from qvit_edge.clikit import (
    UserError,
    fraction,
    int_range,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    writable_dir_path,
)

BITS = int_range(1, 8)
SEED = int_range(0, 2**32 - 1)


def _kv(s: str):
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {s!r}")
    k, v = s.split("=", 1)
    import json

    try:
        return k, json.loads(v)
    except ValueError:
        return k, v


def _finite(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {s}")
    return v


def input_args(args) -> dict:
    """in_chans, img_size, num_classes, mean, std from --input-size / --in-chans / --img-size /
    --num-classes / --mean / --std (and --model-arg in_chans= etc.); a conflict is one UserError line."""
    model_args = dict(args.model_arg)
    chans, size = args.in_chans, args.img_size
    if args.input_size:
        c, h, w = args.input_size
        if h != w:
            raise UserError(f"--input-size {c} {h} {w}: only square inputs are supported (H = W)")
        if c not in (1, 3):
            raise UserError(f"--input-size {c} {h} {w}: C must be 1 (grayscale) or 3 (RGB)")
        if chans is not None and chans != c:
            raise UserError(f"--input-size {c} {h} {w} and --in-chans {chans} disagree")
        if size is not None and size != h:
            raise UserError(f"--input-size {c} {h} {w} and --img-size {size} disagree")
        chans, size = c, h
    out = {"in_chans": chans, "img_size": size, "num_classes": args.num_classes}
    for key, v in out.items():
        if v is not None and key in model_args and model_args[key] != v:
            raise UserError(f"--model-arg {key}={model_args[key]} disagrees with {v} from the input flags")
    channels = chans if chans is not None else model_args.get("in_chans")
    for name in ("mean", "std"):
        vals = getattr(args, name)
        if vals and channels is not None and len(vals) not in (1, channels):
            raise UserError(f"--{name}: {len(vals)} values for {channels} input channels "
                            "(give one per channel, or one)")
    out.update(mean=args.mean, std=args.std)
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    from qvit.train import TrainConfig

    d = TrainConfig()
    g = p.add_argument_group("model")
    g.add_argument("--model", default=d.model, help="architecture (see --list-models)")
    g.add_argument("--list-models", action="store_true", help="print the known architectures and exit")
    g.add_argument(
        "--bits", type=BITS, help="weights and activations of the blocks (1-8); omit for full precision"
    )
    g.add_argument("--w-bits", type=BITS, help="weight bits (overrides --bits)")
    g.add_argument("--a-bits", type=BITS, help="activation bits (overrides --bits)")
    g.add_argument("--embed-bits", type=BITS, default=d.embed_bits, help="patch embedding bits")
    g.add_argument("--head-bits", type=BITS, default=d.head_bits, help="classifier head bits")
    g.add_argument("--no-irm", action="store_true", help="switch the Information Rectification Module off")
    g.add_argument("--irm-stat", choices=["head", "token"], default=d.irm_stat,
                   help="IRM statistics: per head (default; mean and variance of each head's N x d values) "
                        "or per token (the official code's LayerNorm)")
    g.add_argument("--irm-calib", type=nonneg_int, default=d.irm_calib,
                   help="training images the IRM affine is least-squares calibrated on at the start of QAT "
                        "(0: identity affine)")
    g.add_argument("--act-init", choices=["mse", "lsq"], default=d.act_init,
                   help="activation steps from the first batch: least quantization error, "
                        "or LSQ's 2 mean|x|/sqrt(Qp)")
    g.add_argument("--lsq-grad-scale", choices=["sample", "batch"], default=d.lsq_grad_scale,
                   help="elements counted in LSQ's gradient scale 1/sqrt(n Qp): per sample, or the official "
                        "code's whole batch / whole weight")
    g.add_argument(
        "--gelu-clip",
        type=nonneg_float,
        default=d.gelu_clip,
        help="clip the GELU output to [-C, C] (official code: 10; 0 = no clip)",
    )
    g.add_argument(
        "--model-arg",
        type=_kv,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra timm argument, e.g. depth=6 or embed_dim=96 (repeatable)",
    )
    g.add_argument("--img-size", type=positive_int,
                   help="input size in px, square (default: the architecture's)")
    g.add_argument("--input-size", type=positive_int, nargs=3, metavar=("C", "H", "W"),
                   help="input channels and size, as timm's train.py (H = W): "
                        "--in-chans C --img-size H in one")
    g.add_argument("--in-chans", type=int, choices=(1, 3),
                   help="input channels: an image folder is read as grayscale (1) or RGB (3, the default); "
                        "the built-in data sets have 1")
    g.add_argument("--num-classes", type=positive_int,
                   help="classes of the head; must be the data's count (default: that count)")
    g.add_argument("--mean", type=_finite, nargs="+", metavar="M",
                   help="normalisation mean, one per channel or one for all (default: the data's; "
                        "folders ImageNet's)")
    g.add_argument("--std", type=positive_float, nargs="+", metavar="S",
                   help="normalisation std (> 0), one per channel or one for all")
    g.add_argument("--drop-path", type=fraction, default=d.drop_path)
    g.add_argument(
        "--init-from", help="full-precision weights: a checkpoint directory, timm .pth or .safetensors"
    )
    g = p.add_argument_group("distillation")
    g.add_argument(
        "--teacher", help="full-precision teacher: a `qvit train` checkpoint directory or weights file"
    )
    g.add_argument("--distill", choices=["hard", "soft", "none"], default=d.distill)
    g.add_argument(
        "--alpha", type=fraction, default=d.alpha, help="weight of the teacher term (labels: 1 - alpha)"
    )
    g.add_argument("--tau", type=positive_float, default=d.tau, help="soft distillation temperature")
    g.add_argument(
        "--dgd", type=nonneg_float, default=d.dgd, help="DGD coefficient (0 = off; needs --teacher)"
    )
    g.add_argument(
        "--dgd-reduce",
        choices=["sum", "mean"],
        default=d.dgd_reduce,
        help="sum the DGD distances over layers and heads (paper) or average them per row (size-independent)",
    )
    g.add_argument("--dgd-target", choices=["rectified", "normalized", "raw"], default=d.dgd_target,
                   help="the teacher's q, k: through the student's IRM, affine included (rectified), in "
                        "its IRM statistics only (normalized), or raw (official code)")
    g.add_argument("--dgd-point", choices=["rectified", "quantized"], default=d.dgd_point,
                   help="the student's q~, k~ before the quantizer (paper) or after it")
    g = p.add_argument_group("data and optimisation")
    g.add_argument("--data", default=d.data, help="fashion-mnist, digits, or an ImageNet-style folder")
    g.add_argument(
        "--out",
        default=d.out,
        type=writable_dir_path,
        help="run directory (checkpoints last/ and best/, log.csv, log.json)",
    )
    g.add_argument("--resume", action="store_true", help="continue the run in --out")
    g.add_argument("--epochs", type=positive_int, default=d.epochs)
    g.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="per process")
    g.add_argument("--lr", type=positive_float, default=d.lr)
    g.add_argument("--min-lr", type=nonneg_float, default=d.min_lr)
    g.add_argument("--warmup-epochs", type=nonneg_float, default=d.warmup_epochs)
    g.add_argument("--lr-base-size", type=positive_int, metavar="N",
                   help="--lr is per N samples: scaled by the global batch / N (DeiT's and the official "
                        "Q-ViT code's rule; the paper: --lr 2e-4 --lr-base-size 512)")
    g.add_argument("--weight-decay", type=nonneg_float, default=d.weight_decay)
    g.add_argument("--opt", choices=["adamw", "lamb", "sgd"], default=d.opt)
    g.add_argument(
        "--aug-pad", type=nonneg_int, default=d.aug_pad, help="random translation in px (small images)"
    )
    g.add_argument("--re-prob", type=fraction, default=d.re_prob, help="random erasing probability")
    g.add_argument("--no-flip", action="store_true", help="no horizontal flips")
    g.add_argument("--seed", type=SEED, default=d.seed)
    g.add_argument(
        "--workers", type=nonneg_int, default=d.workers, help="data loader workers (image folders)"
    )
    g.add_argument("--threads", type=positive_int, help="torch CPU threads")
    g.add_argument(
        "--save-every",
        type=nonneg_int,
        default=d.save_every,
        help="steps between checkpoints (0: only at epoch ends)",
    )
    g.add_argument("--eval-every", type=positive_int, default=d.eval_every, help="epochs between evaluations")
    g.add_argument("--max-steps", type=positive_int, help="stop (resumably) after this many steps in total")
    g.add_argument("--limit-train", type=positive_int, help="use only the first N training images")
    g.add_argument("--limit-val", type=positive_int, help="evaluate on the first N validation images")
    g.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")


def config_from_args(args) -> "TrainConfig":  # noqa: F821
    from qvit.checkpoint import check_timm_kwargs, has_run
    from qvit.train import TrainConfig

    check_timm_kwargs(dict(args.model_arg), "--model-arg")
    inp = input_args(args)

    for name in ("bits", "w_bits", "a_bits"):
        v = getattr(args, name)
        if v is not None and not 1 <= v <= 8:
            raise UserError(f"--{name.replace('_', '-')} must be 1..8, got {v}")
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0:
        raise UserError("--epochs, --batch-size and --lr must be positive")
    if (args.dgd > 0 or args.distill != "none") and args.teacher is None and (args.bits or args.w_bits):
        print("note: no --teacher: training with labels only (no logit distillation, no DGD)")
    for path in (args.init_from, args.teacher):
        if path and not os.path.exists(path):
            raise UserError(f"no such file or directory: {path}")
    if args.resume and not has_run(args.out):
        raise UserError(f"--resume: no run to continue in {args.out}")
    if not args.resume and has_run(args.out):  # also a run whose checkpoint swap was interrupted
        raise UserError(f"{args.out} already holds a run: add --resume to continue it, or pick another --out")
    return TrainConfig(
        model=args.model,
        out=args.out,
        data=args.data,
        bits=args.bits,
        w_bits=args.w_bits,
        a_bits=args.a_bits,
        embed_bits=args.embed_bits,
        head_bits=args.head_bits,
        irm=not args.no_irm,
        irm_stat=args.irm_stat,
        irm_calib=args.irm_calib,
        act_init=args.act_init,
        lsq_grad_scale=args.lsq_grad_scale,
        gelu_clip=args.gelu_clip or None,
        model_args=dict(args.model_arg),
        img_size=inp["img_size"],
        in_chans=inp["in_chans"],
        num_classes=inp["num_classes"],
        mean=inp["mean"],
        std=inp["std"],
        drop_path=args.drop_path,
        init_from=args.init_from,
        teacher=args.teacher,
        distill=args.distill,
        alpha=args.alpha,
        tau=args.tau,
        dgd=args.dgd,
        dgd_reduce=args.dgd_reduce,
        dgd_target=args.dgd_target,
        dgd_point=args.dgd_point,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        min_lr=args.min_lr,
        warmup_epochs=args.warmup_epochs,
        lr_base_size=args.lr_base_size,
        weight_decay=args.weight_decay,
        opt=args.opt,
        aug_pad=args.aug_pad,
        re_prob=args.re_prob,
        flip=not args.no_flip,
        seed=args.seed,
        workers=args.workers,
        save_every=args.save_every,
        eval_every=args.eval_every,
        max_steps=args.max_steps,
        limit_train=args.limit_train,
        limit_val=args.limit_val,
        progress=not args.no_progress,
    )


def run(args) -> int:
    if args.list_models:
        from qvit.models import list_models

        print("\n".join(list_models()))
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from qvit import train

    cfg = config_from_args(args)
    try:
        from qvit.models import get_arch

        get_arch(cfg.model)
    except ValueError as e:
        raise UserError(str(e)) from None
    try:
        result = train.run(cfg)
    except (TypeError, ValueError) as e:  # e.g. a --model-arg timm does not take
        raise UserError(f"{type(e).__name__}: {e}") from None
    return 130 if result.get("signal") else 0  # interrupted (saved; --resume continues)
