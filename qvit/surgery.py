"""Module surgery shared by the families: a full-precision timm model becomes a fully quantized
Q-ViT in place. Each family's `quantize_<family>` (qvit/models/deit.py, swin.py) walks its model
and uses the pieces here; qvit.models.build looks the family up in the registry.

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

from qvit.quantizers import QuantLinear


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


def quantize_mlp(mlp: nn.Module, w_bits: int, a_bits: int, gelu_clip: float | None) -> None:
    mlp.fc1 = QuantLinear.from_linear(mlp.fc1, w_bits, a_bits)
    mlp.fc2 = QuantLinear.from_linear(mlp.fc2, w_bits, a_bits)
    if not isinstance(mlp.act, nn.GELU):
        raise ValueError(f"only GELU MLPs can be quantized, got {type(mlp.act).__name__}")
    mlp.act = ClippedGELU(gelu_clip)

