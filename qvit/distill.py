"""Distillation: DeiT-style logit distillation and Distribution Guided Distillation (DGD).

DGD (Q-ViT, Eq. 2.22-2.23): for every layer l and head h, the patch-to-patch similarity matrices
of the rectified queries and keys, G_q = q~ q~^T and G_k = k~ k~^T, each row L2-normalised, are
matched between the quantized student and its full-precision teacher:
    L_DGD = sum_l sum_h ( ||G_q,T - G_q,S||_2 + ||G_k,T - G_k,S||_2 )
(Frobenius norm of each N x N difference, averaged over the batch) over all tokens (only the
patch tokens when student and teacher differ in prefix tokens, e.g. distilled vs plain DeiT).
That sum ("sum", the paper's) grows with depth, heads and sqrt(N) and with coefficient 1 dwarfs the
cross-entropy about 100 to 1 here; "mean" (the default) divides it by 2 L H sqrt(N): the
root-mean-square distance of one row of G, in [0, 2] whatever the model size.

What is compared (`DistillConfig.target`, `.point`):
  student: q~, k~ = the IRM outputs before Q_a (point "rectified", the paper's) or after it
           ("quantized", what the integer matmul really sees); the q, k of qkv when IRM is off.
  teacher: its raw q, k ("raw", the official code's) or, by default ("normalized"), its q, k
           normalised with the student's IRM statistics (per token or per head, without the
           affine), so the target is one the student's rectified q~, k~ can reach: a per-token
           LayerNorm student cannot reproduce the teacher's raw per-token norms. Without IRM both
           are raw.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from qvit.attention import QuantAttentionCore, normalize_like, rectify_like

DGD_TARGETS = ("rectified", "normalized", "raw")
DGD_POINTS = ("rectified", "quantized")


def irm_modules(model: nn.Module) -> list:
    """Per attention layer, in order: (norm_q, norm_k) of its IRM, or None without IRM."""
    out = []
    for m in model.modules():
        if isinstance(m, QuantAttentionCore):
            out.append((m.norm_q, m.norm_k) if m.irm else None)
        elif hasattr(m, "qkv") and hasattr(m, "num_heads") and isinstance(m.qkv, nn.Linear):
            out.append(None)
    return out


@contextmanager
def record_qk(model: nn.Module, point: str = "rectified"):
    """Collect (q, k) [B, H, N, d] of every attention layer, in order, during forwards inside the block.
    Works on Q-ViT attention (rectified q~, k~, before or after Q_a as `point` says) and on timm
    Attention / WindowAttention (from qkv)."""
    if point not in DGD_POINTS:
        raise ValueError(f"unknown DGD point {point!r} (one of {', '.join(DGD_POINTS)})")
    store: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks, cores = [], []
    for m in model.modules():
        if isinstance(m, QuantAttentionCore):
            m.record_qk, m.recorded_qk, m.record_point = True, None, point
            cores.append(m)
            hooks.append(m.register_forward_hook(lambda mod, i, o: store.append(mod.recorded_qk)))
        elif hasattr(m, "qkv") and hasattr(m, "num_heads") and isinstance(m.qkv, nn.Linear):

            def hook(lin, inp, out, heads=m.num_heads):
                B, N, _ = out.shape
                qkv = out.reshape(B, N, 3, heads, -1).permute(2, 0, 3, 1, 4)
                store.append((qkv[0], qkv[1]))

            hooks.append(m.qkv.register_forward_hook(hook))
    try:
        yield store
    finally:
        for h in hooks:
            h.remove()
        for m in cores:
            m.record_qk, m.recorded_qk, m.record_point = False, None, "rectified"


def similarity(t: torch.Tensor) -> torch.Tensor:
    """Row-normalised patch-to-patch similarity t t^T of [B, H, N, d] -> [B, H, N, N]."""
    return F.normalize(t @ t.transpose(-2, -1), dim=-1)


DGD_REDUCTIONS = ("sum", "mean")


def teacher_target(teacher_qk: list, student_irms: list, target: str) -> list:
    """The teacher's (q, k) per layer in the student's coordinates there: through the student's IRM
    ("rectified"), normalised with its statistics only ("normalized"), or as they are ("raw").
    Layers without IRM compare raw q, k whatever the target."""
    if target not in DGD_TARGETS:
        raise ValueError(f"unknown DGD target {target!r} (one of {', '.join(DGD_TARGETS)})")
    if target == "raw":
        return list(teacher_qk)
    f = rectify_like if target == "rectified" else normalize_like
    return [(q, k) if irm is None else (f(irm[0], q), f(irm[1], k))
            for (q, k), irm in zip(teacher_qk, student_irms)]


def dgd_loss(student: list, teacher: list, reduce: str = "mean") -> torch.Tensor:
    if reduce not in DGD_REDUCTIONS:
        raise ValueError(f"unknown DGD reduction {reduce!r} (one of {', '.join(DGD_REDUCTIONS)})")
    if len(student) != len(teacher) or not student:
        raise ValueError(
            f"DGD needs the same attention layers in student and teacher ({len(student)} vs {len(teacher)})"
        )
    total, terms = 0.0, 0
    for (qs, ks), (qt, kt) in zip(student, teacher):
        if qs.shape[:2] != qt.shape[:2]:
            raise ValueError(f"DGD: student q {tuple(qs.shape)} vs teacher {tuple(qt.shape)}")
        n = min(qs.shape[2], qt.shape[2])
        if qs.shape[2] != qt.shape[2]:  # e.g. distilled student (cls+dist) vs plain teacher (cls):
            qs, ks, qt, kt = (t[:, :, -n:] for t in (qs, ks, qt, kt))  # match the patch tokens
        for s, t in ((qs, qt), (ks, kt)):
            diff = similarity(t.detach().float()) - similarity(s.float())
            dist = diff.flatten(2).norm(dim=-1)  # [B, H]
            if reduce == "mean":
                dist = dist / math.sqrt(n)
            total = total + dist.sum(dim=1).mean()  # sum over heads, mean over batch
            terms += dist.shape[1]
    return total / terms if reduce == "mean" else total


@dataclass
class DistillConfig:
    kind: str = "hard"  # "hard" (DeiT / Q-ViT), "soft", or "none" (labels only)
    alpha: float = 0.5  # weight of the teacher term; labels get 1 - alpha
    tau: float = 1.0  # soft distillation temperature
    dgd: float = 1.0  # DGD coefficient (paper: 1); 0 switches DGD off
    dgd_reduce: str = "mean"  # "mean" (size-independent) or "sum" over layers and heads (paper)
    dgd_target: str = "normalized"  # the teacher's q, k in the student's IRM statistics, or "raw"
    dgd_point: str = "rectified"  # the student's q~, k~ before Q_a, or "quantized" (after it)

    def to_json(self) -> dict:
        return dict(self.__dict__)


class DistillationLoss(nn.Module):
    """0.5 CE(cls, y) + 0.5 CE(dist, argmax teacher) [+ dgd * L_DGD]; dist = cls for models with one
    head. With kind="none" and dgd=0 no teacher is needed (plain or full-precision training)."""

    def __init__(self, cfg: DistillConfig, teacher: nn.Module | None = None):
        super().__init__()
        if cfg.kind not in ("hard", "soft", "none"):
            raise ValueError(f"unknown distillation {cfg.kind!r}")
        if cfg.dgd_target not in DGD_TARGETS:
            raise ValueError(f"unknown DGD target {cfg.dgd_target!r} (one of {', '.join(DGD_TARGETS)})")
        if cfg.dgd_point not in DGD_POINTS:
            raise ValueError(f"unknown DGD point {cfg.dgd_point!r} (one of {', '.join(DGD_POINTS)})")
        if (cfg.kind != "none" or cfg.dgd > 0) and teacher is None:
            raise ValueError("distillation and DGD need a teacher")
        self.cfg = cfg
        self.teacher = teacher
        if teacher is not None:
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)

    @property
    def needs_teacher(self) -> bool:
        return self.cfg.kind != "none" or self.cfg.dgd > 0

    def forward(self, student: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        use_dgd = cfg.dgd > 0
        if use_dgd:
            with record_qk(student, cfg.dgd_point) as s_qk:
                out = student(x)
            with torch.no_grad(), record_qk(self.teacher) as t_qk:
                t_logits = self.teacher(x)
        else:
            out = student(x)
            t_logits = None
            if cfg.kind != "none":
                with torch.no_grad():
                    t_logits = self.teacher(x)
        cls, dist = out if isinstance(out, (tuple, list)) else (out, out)
        parts = {}
        if cfg.kind == "none":
            base = (
                F.cross_entropy(cls, y)
                if cls is dist
                else 0.5 * (F.cross_entropy(cls, y) + F.cross_entropy(dist, y))
            )
            loss = base
            parts["ce"] = float(base.detach())
        else:
            ce = F.cross_entropy(cls, y)
            if cfg.kind == "hard":
                kd = F.cross_entropy(dist, t_logits.argmax(dim=-1))
            else:
                T = cfg.tau
                kd = (
                    F.kl_div(
                        F.log_softmax(dist / T, -1),
                        F.log_softmax(t_logits / T, -1),
                        reduction="batchmean",
                        log_target=True,
                    )
                    * T
                    * T
                )
            loss = (1 - cfg.alpha) * ce + cfg.alpha * kd
            parts.update(ce=float(ce.detach()), kd=float(kd.detach()))
        if use_dgd:
            t_qk = teacher_target(t_qk, irm_modules(student), cfg.dgd_target)
            dgd = dgd_loss(s_qk, t_qk, cfg.dgd_reduce)
            loss = loss + cfg.dgd * dgd
            parts["dgd"] = float(dgd.detach())
        logits = 0.5 * (cls + dist) if cls is not dist else cls
        return loss, {"logits": logits.detach(), **parts}
