"""The training loop: full-precision training, and QAT of a Q-ViT from a full-precision checkpoint.

One process, or many under `torchrun` (DistributedDataParallel; gloo on CPU, nccl on GPU). Every
`save_every` steps and at each epoch end the run directory's `last/` checkpoint holds everything
needed to continue (weights, optimizer, schedule position, epoch/step, RNG states), so `resume`
loses nothing; `best/` keeps the best validation top-1. `log.csv` and `log.json` get one row an
epoch.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from qvit import checkpoint as ckpt
from qvit.attention import HeadNorm, calibrate_irm
from qvit.data import ArraySet, Augment, DataSet, FolderSet, load_dataset, shard_order
from qvit.distill import DistillationLoss, DistillConfig
from qvit.models import ModelConfig, QConfig, build, get_arch
from qvit.quantizers import ActQuant, WeightQuant, set_act_init, set_grad_scale
from qvit_edge.clikit import UserError


@dataclass
class TrainConfig:
    model: str = "deit_tiny_patch4_28"
    out: str = "runs/default"
    data: str = "fashion-mnist"
    bits: int | None = None  # None: full precision
    w_bits: int | None = None
    a_bits: int | None = None
    embed_bits: int = 8
    head_bits: int = 8
    irm: bool = True
    irm_stat: str = "head"  # IRM statistics: "head" (per-head, the default) or "token" (official code)
    irm_calib: int = 256  # training images the IRM affine is least-squares calibrated on (0: off)
    act_init: str = "mse"  # activation steps from the first batch: "mse" or "lsq" (qvit/quantizers.py)
    lsq_grad_scale: str = "sample"  # quantizers.GRAD_SCALES
    gelu_clip: float | None = 10.0
    model_args: dict = field(default_factory=dict)  # extra timm kwargs (depth, embed_dim, ...)
    img_size: int | None = None
    in_chans: int | None = None  # input channels (folders: 1 grayscale, 3 RGB); None: the data's
    num_classes: int | None = None  # None: the data's class count (given, it must be that count)
    mean: list | None = None  # normalisation, one value per channel or one for all; None: the data's
    std: list | None = None
    drop_path: float = 0.1
    init_from: str | None = None
    teacher: str | None = None
    distill: str = "hard"
    alpha: float = 0.5
    tau: float = 1.0
    dgd: float = 1.0
    dgd_reduce: str = "mean"
    dgd_target: str = "normalized"  # qvit/distill.py
    dgd_point: str = "rectified"
    epochs: int = 10
    batch_size: int = 128  # per process
    lr: float = 5e-4  # at the global batch, unless lr_base_size is set
    lr_base_size: int | None = None  # lr is per this many samples: scaled by global batch / it
    min_lr: float = 1e-5
    warmup_epochs: float = 0.0
    weight_decay: float = 0.05
    opt: str = "adamw"
    aug_pad: int = 2
    re_prob: float = 0.25
    flip: bool = True
    seed: int = 0
    workers: int = 2
    save_every: int = 200  # steps
    eval_every: int = 1  # epochs
    max_steps: int | None = None  # stop (as if interrupted) after this many steps in total
    limit_train: int | None = None  # use only the first N training samples (smoke runs)
    limit_val: int | None = None
    progress: bool = True

    @property
    def quantized(self) -> bool:
        return self.bits is not None or self.w_bits is not None or self.a_bits is not None


# ----------------------------------------------------------------------------------------------
# distributed helpers


def dist_info() -> tuple[int, int, int]:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend)
        local = int(os.environ.get("LOCAL_RANK", 0))
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
        return dist.get_rank(), dist.get_world_size(), local
    return 0, 1, 0


def broadcast_quantizers(model: nn.Module) -> None:
    """After the data-dependent init each process holds steps/offsets from its own first batch
    (the official code's DDP quirk keeps them that way); make everyone use rank 0's."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for m in model.modules():
        if isinstance(m, (ActQuant, WeightQuant)):
            for t in list(m.parameters()) + list(m.buffers()):
                dist.broadcast(t.data, src=0)


def params_in_sync(model: nn.Module) -> bool:
    if not (dist.is_available() and dist.is_initialized()):
        return True
    flat = torch.cat(
        [
            p.detach().float().flatten()
            for p in model.state_dict().values()
            if torch.is_tensor(p) and p.is_floating_point()
        ]
    )
    lo, hi = flat.clone(), flat.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return bool(torch.equal(lo, hi))


# ----------------------------------------------------------------------------------------------
# model, teacher, optimizer, schedule


def inherited_model_args(cfg: TrainConfig) -> dict:
    """The timm model arguments (depth, embed_dim, ...) stored in the --init-from checkpoint, when
    it is a `qvit train` checkpoint directory of the same architecture: QAT from it then needs no
    repeated --model-arg. Explicit --model-arg values win; a weights file carries none."""
    src = cfg.init_from
    if not src or not os.path.isdir(src):
        return {}
    saved = ckpt.read_config(src)["model"]
    if saved.get("arch") != cfg.model:
        return {}
    return {k: v for k, v in (saved.get("timm_kwargs") or {}).items() if k != "drop_path_rate"}


def data_input(cfg: TrainConfig) -> dict:
    """load_dataset's channels / mean / std for this run: the explicit ones (--in-chans, or
    --model-arg in_chans; --mean, --std), else the --init-from checkpoint's (its model arguments,
    and its normalisation when it was trained on the same data), else None (the data's own)."""
    ch = cfg.in_chans or cfg.model_args.get("in_chans") or inherited_model_args(cfg).get("in_chans")
    mean, std = cfg.mean, cfg.std
    if cfg.init_from and os.path.isdir(cfg.init_from) and (mean is None or std is None):
        saved = ckpt.read_config(cfg.init_from)
        d = saved.get("data") or {}
        same_data = (saved.get("train") or {}).get("data") == cfg.data
        if same_data and d.get("channels") is not None and ch in (None, d["channels"]):
            ch = d["channels"]
            mean = mean if mean is not None else d.get("mean")
            std = std if std is not None else d.get("std")
    return {"channels": ch, "mean": mean, "std": std}


def model_config(cfg: TrainConfig, ds: DataSet) -> ModelConfig:
    """The model to build: --model-arg over the --init-from checkpoint's arguments, --in-chans /
    --num-classes / --img-size over both; channels and classes must be the data's (one line)."""
    spec = get_arch(cfg.model)
    inherited = inherited_model_args(cfg)
    kw = {**inherited, **cfg.model_args}
    for key, v in (("in_chans", cfg.in_chans), ("num_classes", cfg.num_classes), ("img_size", cfg.img_size)):
        if v:
            kw[key] = v
    kw.setdefault("in_chans", ds.channels)
    kw.setdefault("num_classes", len(ds.classes))

    def source(key: str, flag: str) -> str:
        if getattr(cfg, key):
            return f"{flag} {kw[key]}"
        if key in cfg.model_args:
            return f"--model-arg {key}={kw[key]}"
        return f"{key}={kw[key]} from --init-from {cfg.init_from}"

    if kw["in_chans"] != ds.channels:
        raise UserError(
            f"{source('in_chans', '--in-chans')}: {cfg.data} is read with {ds.channels} channel(s)"
        )
    if kw["num_classes"] != len(ds.classes):
        raise UserError(f"{source('num_classes', '--num-classes')}: {cfg.data} has {len(ds.classes)} classes "
                        f"({', '.join(ds.classes[:5])}{', ...' if len(ds.classes) > 5 else ''})")
    if cfg.drop_path:
        kw["drop_path_rate"] = cfg.drop_path
    w = cfg.w_bits if cfg.w_bits is not None else cfg.bits
    a = cfg.a_bits if cfg.a_bits is not None else cfg.bits
    q = QConfig(w, a, cfg.embed_bits, cfg.head_bits, cfg.irm, cfg.gelu_clip, cfg.irm_stat)
    return ModelConfig(cfg.model, spec.family, q, kw)


def start_qat(model: nn.Module, cfg: TrainConfig, mcfg: ModelConfig, train_ds: DataSet, img_size: int,
              n_train: int, device="cpu", rank: int = 0, world: int = 1) -> None:
    """The start of QAT, as `qvit train` does it: IRM calibrated to reproduce q, k, then the
    quantizers' data-dependent init on one batch of this process's shard."""
    set_act_init(model, cfg.act_init)
    if mcfg.quant.irm and cfg.irm_calib > 0:
        cal = shard_order(n_train, 0, cfg.seed + 1, rank, world)[: cfg.irm_calib]
        n_fit = calibrate_irm(model, (x.to(device) for x, _ in iterate(
            train_ds, img_size, cfg.batch_size, train=False, order=cal)))
        if rank == 0 and cfg.progress:
            print(f"IRM: {n_fit} layers calibrated on {len(cal)} training images")
    idx = shard_order(n_train, 0, cfg.seed, rank, world)[: cfg.batch_size]
    x, _ = next(iterate(train_ds, img_size, cfg.batch_size, train=False, order=idx))
    model.train()
    with torch.no_grad():
        model(x.to(device))


def img_size_of(model: nn.Module) -> int:
    s = model.patch_embed.img_size
    return int(s[0] if isinstance(s, (tuple, list)) else s)


def load_teacher(cfg: TrainConfig, mcfg: ModelConfig) -> nn.Module:
    """A `qvit train` checkpoint directory, or a weights file for the full-precision counterpart."""
    if os.path.isdir(cfg.teacher):
        teacher, _ = ckpt.load_model(cfg.teacher)
    else:
        fp = ModelConfig(mcfg.arch, mcfg.family, QConfig(), {**mcfg.timm_kwargs, "drop_path_rate": 0.0})
        teacher = build(fp, init_from=cfg.teacher)
    if teacher.qvit_config.quant.quantized:
        print(f"warning: the teacher {cfg.teacher} is quantized; Q-ViT distils from full precision")
    return teacher


def check_teacher(teacher: nn.Module, student: nn.Module, path: str) -> None:
    """The teacher (built from its own checkpoint's model arguments) must see the student's input
    and predict its classes; depth and width may differ (logit distillation; DGD pairs layers)."""
    def shape(m: nn.Module) -> dict:
        return {"in_chans": m.patch_embed.proj.in_channels, "img_size": img_size_of(m),
                "num_classes": m.num_classes}

    t, s = shape(teacher), shape(student)
    for k in t:
        if t[k] != s[k]:
            raise UserError(f"--teacher {path} has {k}={t[k]}, the student {s[k]}")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # Normalisation affines are not decayed whatever their rank: the per-head IRM's (gamma, beta)
    # are [H, head_dim], and decay would pull its 1/gamma scale of q and k up.
    norm_params = {id(p) for m in model.modules() if isinstance(m, (nn.LayerNorm, HeadNorm))
                   for p in m.parameters(recurse=False)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        small = (
            p.ndim <= 1
            or id(p) in norm_params
            or name.endswith(("pos_embed", "cls_token", "dist_token"))
            or "relative_position_bias_table" in name
        )
        (no_decay if small else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.opt == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.opt == "lamb":
        from timm.optim import Lamb

        return Lamb(groups, lr=cfg.lr)
    if cfg.opt == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9)
    raise UserError(f"unknown optimizer {cfg.opt!r} (adamw, lamb, sgd)")


def peak_lr(cfg: TrainConfig, world: int = 1) -> float:
    """The schedule's peak: --lr, or with --lr-base-size the linear scaling rule of DeiT and the
    official Q-ViT code (lr x global batch / base size: 2e-4 at 512 is 5e-5 at 128)."""
    if cfg.lr_base_size is None:
        return cfg.lr
    return cfg.lr * cfg.batch_size * world / cfg.lr_base_size


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int, world: int = 1) -> float:
    """Linear warmup, then cosine from the peak to min_lr over the run (a pure function of the
    step, so the schedule's whole state is the step number)."""
    lr = peak_lr(cfg, world)
    total = max(cfg.epochs * steps_per_epoch, 1)
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warm:
        return lr * (step + 1) / warm
    t = (step - warm) / max(total - warm, 1)
    return cfg.min_lr + 0.5 * (lr - cfg.min_lr) * (1 + math.cos(math.pi * min(t, 1.0)))


# ----------------------------------------------------------------------------------------------
# optimizer / RNG state <-> safetensors + JSON (no pickle)


def pack_train_state(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    groups = []  # a group's tensors (timm's LAMB keeps its step count as one) go with the tensors
    for i, g in enumerate(sd["param_groups"]):
        groups.append({k: v for k, v in g.items() if not torch.is_tensor(v)})
        tensors.update({f"group.{i}.{k}": v for k, v in g.items() if torch.is_tensor(v)})
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    np_state = np.random.get_state()
    py_state = random.getstate()
    meta = {
        "param_groups": groups,
        "opt_scalars": scalars,
        "rng_numpy": [
            np_state[0],
            np_state[1].tolist(),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "rng_python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    return tensors, meta


def unpack_train_state(opt: torch.optim.Optimizer, tensors: dict, meta: dict, restore_rng: bool) -> None:
    state: dict = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, pid, k = key.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    for key, v in meta["opt_scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    groups = [dict(g) for g in meta["param_groups"]]
    for key, v in tensors.items():
        if key.startswith("group."):
            _, i, k = key.split(".", 2)
            groups[int(i)][k] = v
    opt.load_state_dict({"state": state, "param_groups": groups})
    if restore_rng:
        torch.set_rng_state(tensors["rng.torch"])
        if torch.cuda.is_available() and "rng.cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng.cuda"])
        n = meta["rng_numpy"]
        np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
        p = meta["rng_python"]
        random.setstate((p[0], tuple(p[1]), p[2]))


# ----------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def evaluate(
    model: nn.Module,
    ds: DataSet,
    img_size: int,
    batch_size: int = 256,
    workers: int = 0,
    limit: int | None = None,
    device: str = "cpu",
    progress: bool = False,
) -> dict:
    """top-1 / top-5 (percent) and mean cross-entropy over a data set."""
    model.eval()
    correct1 = correct5 = 0
    n = 0
    loss = 0.0
    for x, y in iterate(
        ds, img_size, batch_size, train=False, limit=limit, workers=workers, progress=progress, desc="eval"
    ):
        x, y = x.to(device), y.to(device)
        out = model(x)
        out = out[0] if isinstance(out, (tuple, list)) else out
        loss += float(nn.functional.cross_entropy(out, y, reduction="sum"))
        top = out.topk(min(5, out.shape[1]), dim=1).indices
        correct1 += int((top[:, 0] == y).sum())
        correct5 += int((top == y[:, None]).any(dim=1).sum())
        n += int(y.numel())
    if n == 0:
        raise UserError("the evaluation set is empty")
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "loss": loss / n, "count": n}


def iterate(
    ds: DataSet,
    img_size: int,
    batch_size: int,
    train: bool,
    order: torch.Tensor | None = None,
    start: int = 0,
    aug: Augment | None = None,
    limit: int | None = None,
    workers: int = 0,
    progress: bool = False,
    desc: str = "",
    epoch: int = 0,
    seed: int = 0,
):
    """Batches of (images, labels) in `order` (default: the data set's order), from batch `start`."""
    n = len(ds) if limit is None else min(limit, len(ds))
    if order is None:
        order = torch.arange(n)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    bar = _bar(len(batches), start, progress, desc)
    try:
        if isinstance(ds, ArraySet):
            for idx in batches[start:]:
                yield ds.batch(idx, img_size, train, aug)
                bar.update(1) if bar else None
        elif isinstance(ds, FolderSet):
            tds = ds.torch_dataset(img_size, train)
            flat = [int(i) for b in batches[start:] for i in b]
            loader = torch.utils.data.DataLoader(
                tds,
                batch_size=batch_size,
                sampler=flat,
                num_workers=workers,
                generator=torch.Generator().manual_seed(seed * 1009 + epoch * 7 + start),
            )
            for x, y in loader:
                yield x, y
                bar.update(1) if bar else None
        else:
            raise TypeError(type(ds))
    finally:
        if bar:
            bar.close()


def _bar(total: int, start: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc=desc, leave=False, dynamic_ncols=True)


# ----------------------------------------------------------------------------------------------
# the run


class _StopFlag:
    """SIGTERM / SIGINT: finish the current step, save, exit (a clean interruption)."""

    def __init__(self):
        self.stop = False
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.stop = True

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def checkpoint_config(
    cfg: TrainConfig, mcfg: ModelConfig, dcfg: DistillConfig, ds: DataSet, img_size: int, progress: dict
) -> dict:
    data = ds.describe()
    data.update(
        img_size=img_size,
        interpolation="bilinear" if isinstance(ds, ArraySet) else "bicubic",
        crop_pct=1.0 if isinstance(ds, ArraySet) else 0.875,
    )
    return {
        "format": "qvit-checkpoint",
        "format_version": 1,
        "model": mcfg.to_json(),
        "data": data,
        "classes": ds.classes,
        "distill": dcfg.to_json(),
        "train": asdict(cfg),
        "progress": progress,
    }


def run(cfg: TrainConfig) -> dict:
    """Train (or resume) into cfg.out. Returns the final progress record."""
    rank, world, local = dist_info()
    device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    out = Path(cfg.out)
    last_dir = out / "last"
    resume = ckpt.has_run(out)

    saved = ckpt.read_config(last_dir) if resume else None
    if resume:
        if saved.get("train", {}).get("model") != cfg.model or saved["train"].get("data") != cfg.data:
            raise UserError(
                f"{out} holds a run of {saved['train'].get('model')} on {saved['train'].get('data')}; "
                f"use another --out"
            )
        for k in ("in_chans", "num_classes", "mean", "std"):  # the run's input, unless given again
            if getattr(cfg, k) is None:
                setattr(cfg, k, saved["train"].get(k))
    inp = data_input(cfg)
    train_ds = load_dataset(cfg.data, "train", **inp)
    val_ds = load_dataset(cfg.data, "val", **inp)
    if resume:
        d = saved.get("data") or {}
        for k, flag in (("channels", "--in-chans"), ("mean", "--mean"), ("std", "--std")):
            if d.get(k) is not None and d[k] != getattr(train_ds, k):
                raise UserError(f"{flag} {getattr(train_ds, k)}: the run in {out} was trained with {d[k]}")
        mcfg = ModelConfig.from_json(saved["model"])
        if cfg.teacher is None and saved["train"].get("teacher"):  # keep distilling as the run did
            for k in ("teacher", "distill", "alpha", "tau", "dgd", "dgd_reduce", "dgd_target", "dgd_point"):
                setattr(cfg, k, saved["train"].get(k, getattr(cfg, k)))
            if rank == 0:
                print(f"resuming with the run's teacher {cfg.teacher}")
    else:
        mcfg = model_config(cfg, train_ds)
    torch.manual_seed(cfg.seed)
    model = build(mcfg, init_from=None if resume else cfg.init_from).to(device)
    img_size = img_size_of(model)

    if mcfg.quant.quantized and cfg.init_from is None and not resume and rank == 0:
        print("warning: QAT from random weights (no --init-from full-precision checkpoint)")
    dcfg = DistillConfig(
        cfg.distill if cfg.teacher else "none",
        cfg.alpha,
        cfg.tau,
        cfg.dgd if cfg.teacher else 0.0,
        cfg.dgd_reduce,
        cfg.dgd_target,
        cfg.dgd_point,
    )
    if cfg.dgd > 0 and cfg.teacher and not mcfg.quant.quantized:
        dcfg.dgd = 0.0  # DGD is for quantized students
    teacher = load_teacher(cfg, mcfg).to(device) if cfg.teacher else None
    if teacher is not None:
        check_teacher(teacher, model, cfg.teacher)
    criterion = DistillationLoss(dcfg, teacher)

    n_train = len(train_ds) if cfg.limit_train is None else min(cfg.limit_train, len(train_ds))
    per_rank = math.ceil(n_train / world)
    steps_per_epoch = math.ceil(per_rank / cfg.batch_size)
    aug = Augment(cfg.aug_pad, cfg.flip, cfg.re_prob)

    set_grad_scale(model, cfg.lsq_grad_scale)
    opt = make_optimizer(cfg, model)
    epoch, step, best, history = 0, 0, -1.0, []
    if resume:
        d = ckpt.checkpoint_dir(last_dir)
        model.load_state_dict(ckpt.read_state_dict(d / ckpt.MODEL_FILE), strict=True)
        tensors = ckpt.read_state_dict(d / ckpt.STATE_FILE)
        meta = json.loads((d / ckpt.STATE_JSON).read_text())
        unpack_train_state(opt, tensors, meta, restore_rng=(rank == 0))
        if rank:
            torch.manual_seed(cfg.seed + rank + 7919 * meta["step"])
        epoch, step, best, history = meta["epoch"], meta["step"], meta["best"], meta["history"]
        if rank == 0:
            print(f"resuming {out} at epoch {epoch}, step {step}")
    else:
        torch.manual_seed(cfg.seed + rank)
        np.random.seed(cfg.seed + rank)
        random.seed(cfg.seed + rank)
        # every process then takes rank 0's values
        if mcfg.quant.quantized:
            start_qat(model, cfg, mcfg, train_ds, img_size, n_train, device, rank, world)
        broadcast_quantizers(model)

    ddp = world > 1
    net = nn.parallel.DistributedDataParallel(model) if ddp else model  # broadcasts rank 0's state too

    running = {"loss": 0.0, "n": 0}  # this epoch's running train loss, kept across an interruption
    if resume:
        running.update(meta.get("running", {}))

    def save(progress_epoch: int, in_epoch: bool) -> None:
        if rank != 0:
            return
        tensors, meta = pack_train_state(opt)
        meta.update(
            epoch=progress_epoch,
            step=step,
            best=best,
            history=history,
            in_epoch=in_epoch,
            running={"loss": tot_loss, "n": tot_n} if in_epoch else {"loss": 0.0, "n": 0},
        )
        progress = {"epoch": progress_epoch, "step": step, "best_top1": best}
        ckpt.save_checkpoint(
            last_dir, model, checkpoint_config(cfg, mcfg, dcfg, train_ds, img_size, progress), tensors, meta
        )

    sync_ok = True
    with _StopFlag() as flag:
        while epoch < cfg.epochs:
            order = shard_order(n_train, epoch, cfg.seed, rank, world)
            start = step - epoch * steps_per_epoch
            net.train()
            t0, tot_loss, tot_n = time.time(), running["loss"], running["n"]
            running = {"loss": 0.0, "n": 0}
            stopped = False
            for x, y in iterate(
                train_ds,
                img_size,
                cfg.batch_size,
                train=True,
                order=order,
                start=start,
                aug=aug,
                workers=cfg.workers,
                progress=cfg.progress and rank == 0,
                desc=f"epoch {epoch}",
                epoch=epoch,
                seed=cfg.seed,
            ):
                x, y = x.to(device), y.to(device)
                lr = lr_at(cfg, step, steps_per_epoch, world)
                for g in opt.param_groups:
                    g["lr"] = lr
                loss, parts = criterion(net, x, y)
                if not torch.isfinite(loss):
                    raise UserError(f"loss became {float(loss)} at step {step}; lower --lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                tot_loss += float(loss.detach()) * int(y.numel())
                tot_n += int(y.numel())
                limit_hit = cfg.max_steps is not None and step >= cfg.max_steps
                if flag.stop or limit_hit:
                    save(epoch, in_epoch=True)
                    stopped = True
                    break
                if cfg.save_every and step % cfg.save_every == 0 and step % steps_per_epoch:
                    save(epoch, in_epoch=True)
            if stopped:
                if rank == 0:
                    print(f"stopped at epoch {epoch}, step {step}; continue with --resume")
                return {
                    "epoch": epoch,
                    "step": step,
                    "stopped": True,
                    "signal": flag.stop,
                    "history": history,
                }
            epoch += 1
            sync_ok = params_in_sync(model) and sync_ok
            row = {
                "epoch": epoch,
                "step": step,
                "lr": lr_at(cfg, step - 1, steps_per_epoch, world),
                "train_loss": tot_loss / max(tot_n, 1),
                "epoch_seconds": round(time.time() - t0, 2),
                "params_in_sync": sync_ok,
                **{k: v for k, v in parts.items() if k != "logits"},
            }
            if rank == 0 and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs):
                m = evaluate(model, val_ds, img_size, cfg.batch_size, cfg.workers, cfg.limit_val, device)
                row.update(val_top1=m["top1"], val_top5=m["top5"], val_loss=m["loss"])
                if m["top1"] > best:
                    best = m["top1"]
                    ckpt.save_checkpoint(
                        out / "best",
                        model,
                        checkpoint_config(
                            cfg,
                            mcfg,
                            dcfg,
                            train_ds,
                            img_size,
                            {"epoch": epoch, "step": step, "best_top1": best},
                        ),
                    )
            history.append(row)
            if rank == 0:
                _write_logs(out, history)
                print(json.dumps(row))
            save(epoch, in_epoch=False)
            if ddp:
                dist.barrier()
    result = {"epoch": epoch, "step": step, "stopped": False, "best_top1": best, "history": history}
    if rank == 0 and (out / "best").exists():
        result.update(report_test(cfg, out, device))
    return result


def report_test(cfg: TrainConfig, out: Path, device) -> dict:
    """The selected (best validation) checkpoint on the test split, once, when the run is complete;
    written to test.json. Nothing is ever selected on it. Empty when the data set has no test split
    apart from its validation split."""
    from qvit.data import has_test_split

    if not has_test_split(cfg.data):
        return {}
    model, _ = ckpt.load_model(str(out / "best"))
    model.to(device)
    test_ds = load_dataset(cfg.data, "test", **data_input(cfg))
    m = evaluate(model, test_ds, img_size_of(model), cfg.batch_size, cfg.workers, None, device)
    res = {"test_top1": m["top1"], "test_top5": m["top5"], "test_loss": m["loss"],
           "test_images": len(test_ds)}
    ckpt.save_json(out / "test.json", res)
    if cfg.progress:
        print(json.dumps(res))
    return res


def _write_logs(out: Path, history: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    ckpt.save_json(out / "log.json", history)
    keys = sorted({k for row in history for k in row})
    tmp = out / "log.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    os.replace(tmp, out / "log.csv")
