"""Fully quantized multi-head attention with the Information Rectification Module (IRM).

qkv and proj are QuantLinear; q, k, v and the post-softmax probabilities are quantized per head
(ActQuant with H steps and zero points) so both attention matmuls are integer matmuls:
    S = scale * Q_a(q~) Q_a(k~)^T (+ rel_pos_bias) (+ mask),  P = softmax(S),  O = Q_a(P) Q_a(v)

IRM rectifies q and k before they are quantized, with one of two statistics (`irm_stat`):
  "token": q~ = LayerNorm_d(q), learned (weight, bias) of shape [head_dim] shared across heads:
           the official code's `nn.LayerNorm(head_dim)`. It normalises every token's q on its own,
           which removes the per-token norm the pretrained attention relies on.
  "head":  the paper's Q_a((q - mu + beta) / (gamma sqrt(var + eps))) with mu, var the mean and
           variance of each head's N x d values (per image; per window in Swin) and a learned
           (gamma, beta) of shape [H, head_dim]. `calibrate_irm` fits (gamma, beta) by least
           squares so that q~ ~ q at the start of QAT: the network starts from its FP function.

`QuantAttentionCore` is what every family shares; the drop-ins for timm's attention modules are
the families': `QuantAttention` (DeiT, qvit/models/deit.py) and `QuantWindowAttention` (Swin,
qvit/models/swin.py).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from qvit.quantizers import ActQuant, QuantLinear

IRM_STATS = ("token", "head")


class HeadNorm(nn.Module):
    """IRM with per-head statistics, in the paper's parameterisation:
    x~ = (x - mu_h + beta) / (gamma sqrt(var_h + eps)), mu_h, var_h over each head's N x d values."""

    def __init__(self, heads: int, head_dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(heads, head_dim))
        self.beta = nn.Parameter(torch.zeros(heads, head_dim))

    @staticmethod
    def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and (biased) variance over the last two axes of [B, H, N, d], kept as [B, H, 1, 1]."""
        mu = x.mean(dim=(-2, -1), keepdim=True)
        var = (x - mu).pow(2).mean(dim=(-2, -1), keepdim=True)
        return mu, var

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rectify(x, self.beta, self.gamma)

    def rectify(self, x: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """The IRM of x with this (beta, gamma) [H, d] (forward: its own; DGD's target: held constant)."""
        mu, var = self.stats(x)
        return (x - mu + beta.unsqueeze(1)) / (gamma.unsqueeze(1) * torch.sqrt(var + self.eps))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        """Least squares (gamma, beta) so that the output reproduces x itself: per (head, channel)
        x ~ a z + b u with z = (x - mu) / sigma, u = 1 / sigma (sigma = sqrt(var + eps)), which is the
        output with gamma = 1 / a, beta = b / a."""
        x = x.double()
        mu, var = self.stats(x)
        sigma = torch.sqrt(var + self.eps)
        z = ((x - mu) / sigma).transpose(0, 1).reshape(x.shape[1], -1, x.shape[-1])  # [H, B*N, d]
        u = (1.0 / sigma).expand_as(x).transpose(0, 1).reshape(z.shape)
        t = x.transpose(0, 1).reshape(z.shape)
        szz, szu, suu = (z * z).sum(1), (z * u).sum(1), (u * u).sum(1)
        szt, sut = (z * t).sum(1), (u * t).sum(1)
        det = szz * suu - szu * szu
        a = (szt * suu - sut * szu) / det
        b = (szz * sut - szu * szt) / det
        ok = torch.isfinite(a) & torch.isfinite(b) & (a.abs() > 1e-6)
        self.gamma.copy_(torch.where(ok, 1.0 / a, torch.ones_like(a)).to(self.gamma.dtype))
        self.beta.copy_(torch.where(ok, b / a, torch.zeros_like(b)).to(self.beta.dtype))


@torch.no_grad()
def _fit_layernorm(ln: nn.LayerNorm, x: torch.Tensor) -> None:
    """Least squares (weight, bias) [d] of a per-token LayerNorm so that its output reproduces x."""
    x = x.double()
    z = F.layer_norm(x, x.shape[-1:], eps=ln.eps).reshape(-1, x.shape[-1])
    t = x.reshape(z.shape)
    zm, tm = z.mean(0), t.mean(0)
    w = ((z - zm) * (t - tm)).sum(0) / ((z - zm) ** 2).sum(0)
    ok = torch.isfinite(w)
    w = torch.where(ok, w, torch.ones_like(w))
    ln.weight.copy_(w.to(ln.weight.dtype))
    ln.bias.copy_((tm - w * zm).to(ln.bias.dtype))


def fit_irm(irm: nn.Module, x: torch.Tensor) -> None:
    """Least-squares affine of either IRM form so that it reproduces x [B, H, N, d]."""
    if isinstance(irm, HeadNorm):
        irm.fit(x)
    else:
        _fit_layernorm(irm, x)


def normalize_like(irm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x [B, H, N, d] normalised with the statistics `irm` uses (per token or per head), affine
    left out: the teacher's side of DGD in the student's coordinates."""
    if isinstance(irm, HeadNorm):
        mu, var = irm.stats(x)
        return (x - mu) / torch.sqrt(var + irm.eps)
    return F.layer_norm(x, x.shape[-1:], eps=irm.eps)


def rectify_like(irm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x [B, H, N, d] through `irm` as it stands, statistics and affine, the affine held constant:
    the teacher's side of DGD exactly as the student rectifies its own q, k. With the affine
    calibrated to reproduce q, k, a student that still computes the teacher's q, k starts at zero
    DGD; `normalize_like` drops the affine, a target that student is away from."""
    if isinstance(irm, HeadNorm):
        return irm.rectify(x, irm.beta.detach(), irm.gamma.detach())
    return F.layer_norm(x, x.shape[-1:], irm.weight.detach(), irm.bias.detach(), irm.eps)


def make_irm(stat: str, heads: int, head_dim: int, eps: float) -> nn.Module:
    if stat == "token":
        return nn.LayerNorm(head_dim, eps=eps)
    if stat == "head":
        return HeadNorm(heads, head_dim, eps)
    raise ValueError(f"unknown IRM statistic {stat!r} (one of {', '.join(IRM_STATS)})")


class QuantAttentionCore(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int,
        qkv_bias: bool,
        w_bits: int,
        a_bits: int,
        irm: bool = True,
        irm_eps: float = 1e-5,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        irm_stat: str = "token",
    ):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.attn_dim = num_heads * head_dim
        self.scale = head_dim**-0.5
        self.w_bits, self.a_bits = w_bits, a_bits
        self.qkv = QuantLinear(dim, 3 * self.attn_dim, bias=qkv_bias, w_bits=w_bits, a_bits=a_bits)
        self.proj = QuantLinear(self.attn_dim, dim, bias=True, w_bits=w_bits, a_bits=a_bits)
        self.irm = irm
        self.irm_stat = irm_stat if irm else None
        self.norm_q = make_irm(irm_stat, num_heads, head_dim, irm_eps) if irm else None
        self.norm_k = make_irm(irm_stat, num_heads, head_dim, irm_eps) if irm else None
        self.q_act = ActQuant(a_bits, channels=num_heads)
        self.k_act = ActQuant(a_bits, channels=num_heads)
        self.v_act = ActQuant(a_bits, channels=num_heads)
        self.p_act = ActQuant(a_bits, channels=num_heads)  # post-softmax probabilities, unsigned
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)
        # DGD: when record_qk is True, forward keeps q~ and k~ [B, H, N, d]: rectified, before
        # Q_a ("rectified") or after it ("quantized"), as record_point says.
        self.record_qk = False
        self.record_point = "rectified"
        self.recorded_qk: tuple[torch.Tensor, torch.Tensor] | None = None
        # calibrate_irm: when set, forward bypasses IRM and appends the raw (q, k) here.
        self.irm_calibration: list | None = None

    def _copy_linear(self, qkv: nn.Linear, proj: nn.Linear) -> None:
        with torch.no_grad():
            for dst, src in ((self.qkv, qkv), (self.proj, proj)):
                dst.weight.copy_(src.weight)
                if src.bias is not None:
                    dst.bias.copy_(src.bias)

    def attend(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, N, C] -> [B, N, C]; bias broadcasts against the scores [B, H, N, N]."""
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.irm and self.irm_calibration is not None:
            self.irm_calibration.append((q.detach(), k.detach()))
        elif self.irm:
            q, k = self.norm_q(q), self.norm_k(k)
        if self.record_qk and self.record_point == "rectified":
            self.recorded_qk = (q, k)
        q, k, v = self.q_act(q), self.k_act(k), self.v_act(v)
        if self.record_qk and self.record_point == "quantized":
            self.recorded_qk = (q, k)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if bias is not None:
            attn = attn + bias
        attn = self.p_act(attn.softmax(dim=-1))
        attn = self.attn_drop(attn)
        out = (attn @ v).transpose(1, 2).reshape(B, N, self.attn_dim)
        return self.proj_drop(self.proj(out))

    def _int_form(self) -> dict:
        irm = None
        if self.irm and self.irm_stat == "head":
            irm = dict(
                stat="head",
                q_gamma=_np(self.norm_q.gamma),
                q_beta=_np(self.norm_q.beta),
                k_gamma=_np(self.norm_k.gamma),
                k_beta=_np(self.norm_k.beta),
                eps=float(self.norm_q.eps),
            )
        elif self.irm:
            irm = dict(
                stat="token",
                q_weight=_np(self.norm_q.weight),
                q_bias=_np(self.norm_q.bias),
                k_weight=_np(self.norm_k.weight),
                k_bias=_np(self.norm_k.bias),
                eps=float(self.norm_q.eps),
            )
        return dict(
            qkv=self.qkv.int_form(),
            proj=self.proj.int_form(),
            q=self.q_act.int_params(),
            k=self.k_act.int_params(),
            v=self.v_act.int_params(),
            p=self.p_act.int_params(),
            irm=irm,
            heads=int(self.num_heads),
            head_dim=int(self.head_dim),
            scale=float(self.scale),
            rel_pos_bias=None,
        )


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


@torch.no_grad()
def calibrate_irm(model: nn.Module, batches) -> int:
    """Fit every IRM's affine by least squares so that it reproduces its input q, k on `batches`
    (an iterable of input tensors, a few hundred images): at the start of QAT the rectified
    attention then computes (nearly) what the full-precision one did. Run it before the
    quantizers initialise from data (they must see the calibrated q~, k~; during this pass IRM is
    bypassed, which is what it is fitted to reproduce). Returns the number of IRMs fitted."""
    cores = [m for m in model.modules() if isinstance(m, QuantAttentionCore) and m.irm]
    if not cores:
        return 0
    for c in cores:
        c.irm_calibration = []
    # Quantizers initialise on their first batch; this pass must not be it (it bypasses IRM).
    flags = [(m, m.initialized.clone()) for m in model.modules()
             if isinstance(getattr(m, "initialized", None), torch.Tensor)]
    was_training = model.training
    model.eval()
    try:
        for x in batches:
            model(x)
    finally:
        model.train(was_training)
        for m, f in flags:
            m.initialized.copy_(f)
        collected = [(c, c.irm_calibration) for c in cores]
        for c in cores:
            c.irm_calibration = None
    for c, pairs in collected:
        if not pairs:
            continue
        q = torch.cat([p[0] for p in pairs])
        k = torch.cat([p[1] for p in pairs])
        fit_irm(c.norm_q, q)
        fit_irm(c.norm_k, k)
    return len(cores)
