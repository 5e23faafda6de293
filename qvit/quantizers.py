"""Fake quantizers (LSQ / LSQ+) and the quantized linear and patch-embedding layers.

The arithmetic follows `qvit_edge.quant` exactly (unsigned activation codes with an integer zero
point, signed per-output-channel weight codes, 1 bit = {-1, +1}, round-half-to-even), so each
layer's `int_form()` gives the integer GEMM + float epilogue that computes the same function as
its fake-quant forward. docs/quantization.md and docs/training.md say why.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from qvit_edge import quant


class _RoundSTE(torch.autograd.Function):
    """torch.round (half to even, like numpy.rint) forward, identity backward."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):
        return g


MIN_STEP = 1e-8  # learned steps are used as max(step, MIN_STEP): a step driven to 0 or below stays valid


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return _RoundSTE.apply(x)


class _GradScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, g):
        ctx.g = g
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.g, None


def grad_scale(p: torch.Tensor, g: float) -> torch.Tensor:
    """Value of p exactly, gradient multiplied by g (the LSQ step-size gradient scale)."""
    return _GradScale.apply(p, g)


class _SignSTE(torch.autograd.Function):
    """Forward {-1, +1} (w >= 0 -> +1, as quant.py); backward the gradient of clamp(x, -1, 1)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x.abs() <= 1).to(g.dtype)


class _FakeQuantAct(torch.autograd.Function):
    """x_hat = (clamp(round(x / s) + z, 0, qmax) - z) * s (the rounding of quant.py) with the LSQ /
    LSQ+ straight-through gradients of round(clamp(x / s + z, 0, qmax)), in one autograd node that
    keeps only x (the composed ops would keep five x-sized tensors per quantizer):
        inside = 0 <= x/s + z <= qmax
        dx = [inside],  ds = round(x/s) - x/s inside, (code - z) outside,  dz = -s [outside]
    s and z broadcast against x."""

    @staticmethod
    def forward(ctx, x, step, zp, qmax):
        codes = torch.clamp(torch.round(x / step) + zp, 0, qmax)
        ctx.save_for_backward(x, step, zp)
        ctx.qmax = qmax
        return (codes - zp) * step

    @staticmethod
    def backward(ctx, gy):
        x, step, zp = ctx.saved_tensors
        v = x / step
        t = v + zp
        inside = (t >= 0) & (t <= ctx.qmax)
        gx = gy * inside
        rounded = torch.round(v)
        gs = gy * torch.where(inside, rounded - v, torch.clamp(rounded + zp, 0, ctx.qmax) - zp)
        gz = gy * torch.where(inside, torch.zeros_like(step), -step)
        return gx, gs.sum_to_size(step.shape), gz.sum_to_size(zp.shape), None


# How an activation step initialises from its first batch:
#   "mse": the step of least quantization error on the batch, searched over fractions of the
#          largest magnitude (a probability quantizer then keeps the large probabilities that
#          carry the attention instead of clipping everything above ~2 mean(p));
#   "lsq": LSQ's 2 mean|x| / sqrt(Qp).
ACT_INITS = ("mse", "lsq")
ACT_INIT = "mse"
MSE_GRID = 64  # candidate steps, fractions 1/64 .. 1 of the largest magnitude


@torch.no_grad()
def _mse_step(xs: torch.Tensor, zp: torch.Tensor, qmax: int) -> torch.Tensor:
    """Per row of xs [C, n]: the step minimising sum (fake_quant(x) - x)^2 for codes in [0, qmax]
    with zero point zp [C], among steps covering 1/MSE_GRID .. 1 of the range zp allows."""
    hi = torch.maximum(xs.max(dim=1).values / torch.clamp(qmax - zp, min=1),
                       (-xs.min(dim=1).values) / torch.clamp(zp, min=1))  # [C]: step to cover all
    best = torch.full_like(hi, float("inf"))
    step = hi.clone()
    for i in range(1, MSE_GRID + 1):
        s = (hi * i / MSE_GRID).clamp_min(MIN_STEP)
        codes = torch.clamp(torch.round(xs / s[:, None]) + zp[:, None], 0, qmax)
        err = ((codes - zp[:, None]) * s[:, None] - xs).pow(2).sum(dim=1)
        better = err < best
        best = torch.where(better, err, best)
        step = torch.where(better, s, step)
    return step


# LSQ gradient scale g = 1 / sqrt(elements per step * Qp), the elements counted either per sample
# ("sample": independent of the batch size and the number of processes) or as the official Q-ViT
# code does ("batch": x.numel() with the batch, w.numel() over the whole weight, so g shrinks as
# the per-process batch grows).
GRAD_SCALES = ("sample", "batch")


def set_grad_scale(model: nn.Module, mode: str) -> int:
    """Choose how every quantizer of `model` counts the elements of its LSQ gradient scale."""
    if mode not in GRAD_SCALES:
        raise ValueError(f"unknown LSQ gradient scale {mode!r} (one of {', '.join(GRAD_SCALES)})")
    n = 0
    for m in model.modules():
        if isinstance(m, (ActQuant, WeightQuant)):
            m.grad_scale_mode, n = mode, n + 1
    return n


def set_act_init(model: nn.Module, method: str) -> int:
    """Choose how every activation quantizer of `model` initialises from its first batch."""
    if method not in ACT_INITS:
        raise ValueError(f"unknown activation quantizer init {method!r} (one of {', '.join(ACT_INITS)})")
    n = 0
    for m in model.modules():
        if isinstance(m, ActQuant):
            m.init, n = method, n + 1
    return n


class ActQuant(nn.Module):
    """Asymmetric activation quantizer with a learned step and a learned offset (LSQ+).

    codes = clamp(round(x / step) + zp, 0, 2^b - 1), x_hat = (codes - zp) * step, with
    zp = round_ste(clamp(offset, 0, 2^b - 1)) an integer inside the code range. One step/offset
    per tensor, or per head (`channels=H`, `channel_dim=1` of a [B, H, N, d] tensor).
    Initialised from the first batch it sees (LSQ+ style, see `init_from`).
    """

    def __init__(self, bits: int, channels: int | None = None, channel_dim: int = 1, init: str | None = None):
        super().__init__()
        quant.act_range(bits)  # validates bits
        self.bits = bits
        self.init = init or ACT_INIT
        if self.init not in ACT_INITS:
            raise ValueError(f"unknown activation quantizer init {self.init!r} "
                             f"(one of {', '.join(ACT_INITS)})")
        self.channels = channels
        self.channel_dim = channel_dim
        self.grad_scale_mode = "sample"
        shape = () if channels is None else (channels,)
        self.step = nn.Parameter(torch.ones(shape))
        self.offset = nn.Parameter(torch.zeros(shape))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.uint8))

    @property
    def qmax(self) -> int:
        return (1 << self.bits) - 1

    def extra_repr(self) -> str:
        return f"bits={self.bits}, channels={self.channels}"

    def _view(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.channels is None:
            return p
        shape = [1] * x.dim()
        shape[self.channel_dim] = self.channels
        return p.view(shape)

    @torch.no_grad()
    def init_from(self, x: torch.Tensor) -> None:
        """Data-dependent init: 'signed' (zp = 2^(b-1)) if the batch has negatives, else unsigned
        (zp = 0); then the step per channel by `self.init` (ACT_INIT)."""
        if self.channels is None:
            xs = x.detach().float().reshape(1, -1)
        else:
            xs = x.detach().float().transpose(0, self.channel_dim).reshape(self.channels, -1)
        signed = xs.min(dim=1).values < -1e-5
        half = 1 << (self.bits - 1)
        qp = torch.where(signed, float(max(half - 1, 1)), float(self.qmax))
        zp = torch.where(signed, float(half), 0.0)
        if self.init == "lsq":
            step = 2 * xs.abs().mean(dim=1) / qp.sqrt()
        else:
            step = _mse_step(xs, zp, self.qmax)
        step = step.clamp_min(MIN_STEP)
        self.step.copy_(step.reshape(self.step.shape))
        self.offset.copy_(zp.reshape(self.offset.shape))
        self.initialized.fill_(1)

    def zero_point(self) -> torch.Tensor:
        return round_ste(self.offset.clamp(0, self.qmax))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.initialized:
            self.init_from(x)
        # LSQ gradient scale (GRAD_SCALES)
        n = (x[0] if self.grad_scale_mode == "sample" else x).numel() // (self.channels or 1)
        g = 1.0 / math.sqrt(max(n, 1) * self.qmax)
        step = self._view(grad_scale(self.step.clamp_min(MIN_STEP), g), x)
        zp = self._view(grad_scale(self.zero_point(), g), x)
        return _FakeQuantAct.apply(x, step, zp, self.qmax)

    @torch.no_grad()
    def int_params(self) -> dict:
        """step (float32 [] or [H]), zp (int32, same shape), bits: what `qvit_edge.quant` needs."""
        zp = torch.round(self.offset.clamp(0, self.qmax))
        return dict(
            step=self.step.detach().clamp_min(MIN_STEP).cpu().numpy().astype(np.float32),
            zp=zp.cpu().numpy().astype(np.int32),
            bits=int(self.bits),
        )


class WeightQuant(nn.Module):
    """Symmetric LSQ weight quantizer, one learned step per output channel.

    b >= 2: codes round(clamp(w / s, -2^(b-1), 2^(b-1)-1)); init s = 2 mean|W_n| / sqrt(Qp).
    b == 1: codes sign(w) in {-1, +1} (w >= 0 -> +1, as quant.py); init s = mean|W_n| (the
    L2-optimal scale of a binary code); straight-through gradient inside |w| <= s.
    """

    def __init__(self, bits: int, out_channels: int):
        super().__init__()
        quant.weight_range(bits)
        self.bits = bits
        self.grad_scale_mode = "sample"
        self.step = nn.Parameter(torch.ones(out_channels))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.uint8))

    def extra_repr(self) -> str:
        return f"bits={self.bits}"

    @torch.no_grad()
    def init_from(self, w: torch.Tensor) -> None:
        mean_abs = w.detach().float().abs().reshape(w.shape[0], -1).mean(dim=1)
        if self.bits == 1:
            step = mean_abs
        else:
            step = 2 * mean_abs / math.sqrt((1 << (self.bits - 1)) - 1)
        self.step.copy_(step.clamp_min(MIN_STEP))
        self.initialized.fill_(1)

    def codes(self, w: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        s = step.view((-1,) + (1,) * (w.dim() - 1))
        if self.bits == 1:
            return _SignSTE.apply(w / s)
        lo, hi = quant.weight_range(self.bits)
        return round_ste(torch.clamp(w / s, lo, hi))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.initialized:
            self.init_from(w)
        qp = 1 if self.bits == 1 else (1 << (self.bits - 1)) - 1
        n = (w[0] if self.grad_scale_mode == "sample" else w).numel()  # GRAD_SCALES
        step = grad_scale(self.step.clamp_min(MIN_STEP), 1.0 / math.sqrt(n * qp))
        return self.codes(w, step) * step.view((-1,) + (1,) * (w.dim() - 1))

    @torch.no_grad()
    def int_codes(self, w: torch.Tensor) -> np.ndarray:
        if not self.initialized:
            self.init_from(w)
        return self.codes(w, self.used_step()).cpu().numpy().astype(np.int8)

    @torch.no_grad()
    def used_step(self) -> torch.Tensor:
        """The step the forward uses (float32 [N])."""
        return self.step.detach().clamp_min(MIN_STEP)


class QuantLinear(nn.Linear):
    """nn.Linear whose input (per tensor) and weight (per output channel) are fake-quantized.

    Keeps nn.Linear's `weight`/`bias` names, so full-precision state dicts load unchanged.
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, w_bits: int = 4, a_bits: int = 4
    ):
        super().__init__(in_features, out_features, bias=bias)
        self.w_bits, self.a_bits = w_bits, a_bits
        self.w_quant = WeightQuant(w_bits, out_features)
        self.a_quant = ActQuant(a_bits)

    @classmethod
    def from_linear(cls, m: nn.Linear, w_bits: int, a_bits: int) -> "QuantLinear":
        q = cls(m.in_features, m.out_features, bias=m.bias is not None, w_bits=w_bits, a_bits=a_bits)
        q.to(device=m.weight.device, dtype=m.weight.dtype)
        with torch.no_grad():
            q.weight.copy_(m.weight)
            if m.bias is not None:
                q.bias.copy_(m.bias)
        return q

    def extra_repr(self) -> str:
        return super().extra_repr() + f", w_bits={self.w_bits}, a_bits={self.a_bits}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.a_quant(x), self.w_quant(self.weight), self.bias)

    @torch.no_grad()
    def int_form(self) -> dict:
        """y = a_step * w_step[n] * sum_k (a - a_zp) * weight[n, k] + bias[n] (see quant.py)."""
        a = self.a_quant.int_params()
        return dict(
            weight=self.w_quant.int_codes(self.weight),
            w_step=self.w_quant.used_step().cpu().numpy().astype(np.float32),
            bias=None if self.bias is None else self.bias.detach().cpu().numpy().astype(np.float32),
            a_step=a["step"],
            a_zp=a["zp"],
            w_bits=int(self.w_bits),
            a_bits=int(self.a_bits),
        )


class QuantConv2d(nn.Conv2d):
    """Patch-embedding convolution (kernel = stride = patch), quantized like QuantLinear."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        patch: int,
        bias: bool = True,
        w_bits: int = 8,
        a_bits: int = 8,
    ):
        super().__init__(in_channels, out_channels, kernel_size=patch, stride=patch, bias=bias)
        self.w_bits, self.a_bits = w_bits, a_bits
        self.w_quant = WeightQuant(w_bits, out_channels)
        self.a_quant = ActQuant(a_bits)

    @classmethod
    def from_conv(cls, m: nn.Conv2d, w_bits: int, a_bits: int) -> "QuantConv2d":
        kh, kw = m.kernel_size
        if kh != kw or tuple(m.stride) != (kh, kw) or m.padding not in ((0, 0), "valid") or m.groups != 1:
            raise ValueError("only a patch embedding (square kernel = stride, no padding) can be quantized")
        q = cls(m.in_channels, m.out_channels, kh, bias=m.bias is not None, w_bits=w_bits, a_bits=a_bits)
        q.to(device=m.weight.device, dtype=m.weight.dtype)
        with torch.no_grad():
            q.weight.copy_(m.weight)
            if m.bias is not None:
                q.bias.copy_(m.bias)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.a_quant(x), self.w_quant(self.weight), self.bias, self.stride)

    @torch.no_grad()
    def int_form(self) -> dict:
        """As QuantLinear.int_form, weight flattened to [N, C*kh*kw] in (c, kh, kw) order."""
        a = self.a_quant.int_params()
        codes = self.w_quant.int_codes(self.weight)
        return dict(
            weight=codes.reshape(codes.shape[0], -1),
            w_step=self.w_quant.used_step().cpu().numpy().astype(np.float32),
            bias=None if self.bias is None else self.bias.detach().cpu().numpy().astype(np.float32),
            a_step=a["step"],
            a_zp=a["zp"],
            w_bits=int(self.w_bits),
            a_bits=int(self.a_bits),
            patch=int(self.kernel_size[0]),
        )


def quantizers(model: nn.Module):
    """Every ActQuant / WeightQuant in a model."""
    return [m for m in model.modules() if isinstance(m, (ActQuant, WeightQuant))]
