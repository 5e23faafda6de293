"""FLOPs, BOPs and OPs of a fully quantized model (the convention of Q-ViT's group: ReActNet, Bi-Real).

Counted per image, from one traced forward pass, over the matrix products only (Swin's `flops()`
convention, which the Q-ViT authors say they used: multiply-accumulates, LayerNorm / softmax /
GELU / residuals not counted):
    MACs  of every linear layer, the patch embedding and both attention matmuls (Q K^T and A V)
    BOPs  = w_bits * a_bits * MACs of the low-bit (< 8 bit) products
    FLOPs = MACs of the rest: the 8-bit patch embedding and head count in full, like float
    OPs   = BOPs / 64 + FLOPs;  theoretical speed-up = MACs of the full-precision model / OPs
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from qvit.attention import QuantAttentionCore
from qvit.quantizers import QuantConv2d, QuantLinear

FULL_BITS = 8  # products at this width or wider are counted as FLOPs


@dataclass
class LayerCount:
    name: str
    macs: int
    w_bits: int | None  # None: full precision
    a_bits: int | None

    @property
    def low_bit(self) -> bool:
        return self.w_bits is not None and max(self.w_bits, self.a_bits) < FULL_BITS


def trace_macs(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerCount]:
    rows: list[LayerCount] = []
    hooks = []
    B = 1

    def lin_hook(name):
        def hook(m, inp, out):
            # every output element is one fan_in-long dot product
            if isinstance(m, nn.Linear):
                fan_in = m.in_features
            else:
                fan_in = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            bits = (m.w_bits, m.a_bits) if isinstance(m, (QuantLinear, QuantConv2d)) else (None, None)
            rows.append(LayerCount(name, out.numel() * fan_in // B, *bits))

        return hook

    def attn_hook(name):
        def hook(m, inp, out):
            x = inp[0]
            Bp, N, _ = x.shape  # B' = B * windows
            macs = Bp * m.num_heads * N * N * m.head_dim // B
            for part in ("qk", "av"):
                rows.append(LayerCount(f"{name}.{part}", macs, m.a_bits, m.a_bits))

        return hook

    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            hooks.append(m.register_forward_hook(lin_hook(name)))
        elif isinstance(m, QuantAttentionCore):
            hooks.append(m.register_forward_hook(attn_hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((B,) + tuple(input_shape)))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return rows


def count(model: nn.Module) -> dict:
    """FLOPs / BOPs / OPs / speed-up of a quantized qvit model (per image)."""
    pe = model.patch_embed
    size = pe.img_size if isinstance(pe.img_size, (tuple, list)) else (pe.img_size, pe.img_size)
    rows = trace_macs(model, (pe.proj.in_channels, *size))
    macs = sum(r.macs for r in rows)
    bops = sum(r.macs * r.w_bits * r.a_bits for r in rows if r.low_bit)
    flops = sum(r.macs for r in rows if not r.low_bit)
    ops = bops / 64 + flops
    return {
        "macs_fp": macs,
        "flops": flops,
        "bops": bops,
        "ops": ops,
        "speedup": macs / ops if ops else None,
        "layers": [r.__dict__ for r in rows],
    }
