"""Module surgery: a full-precision timm DeiT / Swin becomes a fully quantized Q-ViT in place.

timm's attribute names are kept (patch_embed.proj, blocks[i].attn.qkv, mlp.fc1, head, ...), so
timm checkpoints load into the result and the exporter can walk it like the timm model.

Quantized: patch embedding and classifier head(s) at `embed_bits` / `head_bits` (8 by default);
in every block qkv, proj, fc1, fc2 and the q, k, v, attention-probability operands at
`w_bits` / `a_bits`; Swin's patch-merging reduction at the block bits too. LayerNorm, softmax,
GELU, residuals, biases, position embeddings and tokens stay float.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from qvit.attention import QuantAttention, QuantWindowAttention
from qvit.quantizers import QuantConv2d, QuantLinear


class ClippedGELU(nn.Module):
    """Exact GELU whose output is clipped to [-clip, clip] (the official code's undocumented
    `clamp(-10, 10)` before fc2's quantizer); clip=None is plain GELU."""

    def __init__(self, clip: float | None = 10.0):
        super().__init__()
        self.clip = None if clip is None else float(clip)

    def extra_repr(self) -> str:
        return f"clip={self.clip}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(x)
        return x if self.clip is None else x.clamp(-self.clip, self.clip)


def _quantize_mlp(mlp: nn.Module, w_bits: int, a_bits: int, gelu_clip: float | None) -> None:
    mlp.fc1 = QuantLinear.from_linear(mlp.fc1, w_bits, a_bits)
    mlp.fc2 = QuantLinear.from_linear(mlp.fc2, w_bits, a_bits)
    if not isinstance(mlp.act, nn.GELU):
        raise ValueError(f"only GELU MLPs can be quantized, got {type(mlp.act).__name__}")
    mlp.act = ClippedGELU(gelu_clip)


def quantize_deit(
    model: nn.Module,
    w_bits: int,
    a_bits: int,
    embed_bits: int = 8,
    head_bits: int = 8,
    irm: bool = True,
    gelu_clip: float | None = 10.0,
    irm_stat: str = "token",
) -> nn.Module:
    model.patch_embed.proj = QuantConv2d.from_conv(model.patch_embed.proj, embed_bits, embed_bits)
    for blk in model.blocks:
        blk.attn = QuantAttention.from_timm(blk.attn, w_bits, a_bits, irm=irm, irm_stat=irm_stat)
        _quantize_mlp(blk.mlp, w_bits, a_bits, gelu_clip)
    for name in ("head", "head_dist"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Linear):
            setattr(model, name, QuantLinear.from_linear(head, head_bits, head_bits))
    return model


def quantize_swin(
    model: nn.Module,
    w_bits: int,
    a_bits: int,
    embed_bits: int = 8,
    head_bits: int = 8,
    irm: bool = True,
    gelu_clip: float | None = 10.0,
    irm_stat: str = "token",
) -> nn.Module:
    model.patch_embed.proj = QuantConv2d.from_conv(model.patch_embed.proj, embed_bits, embed_bits)
    for layer in model.layers:
        if hasattr(layer.downsample, "reduction"):
            layer.downsample.reduction = QuantLinear.from_linear(layer.downsample.reduction, w_bits, a_bits)
        for blk in layer.blocks:
            blk.attn = QuantWindowAttention.from_timm(blk.attn, w_bits, a_bits, irm=irm, irm_stat=irm_stat)
            _quantize_mlp(blk.mlp, w_bits, a_bits, gelu_clip)
    if isinstance(model.head.fc, nn.Linear):
        model.head.fc = QuantLinear.from_linear(model.head.fc, head_bits, head_bits)
    return model


QUANTIZE = {"deit": quantize_deit, "swin": quantize_swin}
