"""DeiT, the training side: its architectures, the attention that replaces timm's `Attention`,
the surgery that quantizes a timm DeiT, and the walk that exports one into the integer graph
(the layout itself is qvit_compile.intmodel.deit's, shared with the synthetic models)."""

from __future__ import annotations

import torch
import torch.nn as nn

from qvit.attention import QuantAttentionCore
from qvit.export import ExportError, gelu_clip
from qvit.models.registry import ArchSpec, Family, register_arch, register_family
from qvit.quantizers import QuantConv2d, QuantLinear
from qvit.surgery import quantize_mlp
from qvit_compile.intmodel.deit import lay_out_deit


class QuantAttention(QuantAttentionCore):
    """Drop-in for timm `Attention` (DeiT / ViT blocks)."""

    @classmethod
    def from_timm(cls, m: nn.Module, w_bits: int, a_bits: int, irm: bool = True,
                  irm_stat: str = "token") -> "QuantAttention":
        if (
            not isinstance(m.q_norm, nn.Identity)
            or not isinstance(m.norm, nn.Identity)
            or getattr(m, "gate", None) is not None
        ):
            raise ValueError("only plain timm Attention (no qk_norm / scale_norm / gate) can be quantized")
        dim = m.qkv.in_features
        q = cls(
            dim,
            m.num_heads,
            m.head_dim,
            m.qkv.bias is not None,
            w_bits,
            a_bits,
            irm=irm,
            attn_drop=m.attn_drop.p,
            proj_drop=m.proj_drop.p,
            irm_stat=irm_stat,
        )
        q.to(m.qkv.weight.device)
        q._copy_linear(m.qkv, m.proj)
        return q

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False):
        if is_causal:
            raise ValueError("causal attention is not part of Q-ViT")
        return self.attend(x, attn_mask)

    @torch.no_grad()
    def int_form(self) -> dict:
        return self._int_form()


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
        quantize_mlp(blk.mlp, w_bits, a_bits, gelu_clip)
    for name in ("head", "head_dist"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Linear):
            setattr(model, name, QuantLinear.from_linear(head, head_bits, head_bits))
    return model


def _spec(model: nn.Module) -> dict:
    for attr, ok, why in (
        ("reg_token", lambda v: v is None, "register tokens"),
        ("no_embed_class", lambda v: not v, "position embeddings without the class token"),
        ("dynamic_img_size", lambda v: not v, "dynamic image size"),
        ("global_pool", lambda v: v == "token", "pooling other than the class token"),
        ("cls_token", lambda v: v is not None, "no class token"),
    ):
        if hasattr(model, attr) and not ok(getattr(model, attr)):
            raise ExportError(f"DeiT with {why} is not supported by the integer format")
    for attr in ("norm_pre", "fc_norm"):
        if not isinstance(getattr(model, attr, nn.Identity()), nn.Identity):
            raise ExportError(f"DeiT with {attr} is not supported by the integer format")
    blk0 = model.blocks[0]
    for blk in model.blocks:
        for ls in ("ls1", "ls2"):
            if not isinstance(getattr(blk, ls, nn.Identity()), nn.Identity):
                raise ExportError("DeiT with layer scale is not supported by the integer format")
    pe = model.patch_embed
    if not isinstance(getattr(pe, "norm", nn.Identity()), nn.Identity):
        raise ExportError("DeiT with a patch-embedding norm is not supported by the integer format")
    conv = pe.proj
    return {
        "in_chans": conv.in_channels,
        "img_size": tuple(pe.img_size),
        "patch": conv.kernel_size[0],
        "dim": model.embed_dim,
        "depth": len(model.blocks),
        "heads": blk0.attn.num_heads,
        "mlp_hidden": blk0.mlp.fc1.out_features,
        "num_classes": model.num_classes,
        "distilled": getattr(model, "dist_token", None) is not None,
        "gelu_clip": gelu_clip(blk0.mlp),
    }


def export_deit(model: nn.Module, b, src) -> dict:
    """Lay a quantized DeiT out into the GraphBuilder `b`; -> the config entries DeiT adds."""
    spec = _spec(model)
    lay_out_deit(b, src, spec)
    return {"distilled": spec["distilled"]}


def _prepare(model: nn.Module) -> None:
    if hasattr(model, "set_distilled_training"):
        model.set_distilled_training(True)  # train mode returns (cls, dist) logits; eval their mean


register_family(Family("deit", quantize_deit, export_deit, _prepare))

for _size in ("tiny", "small", "base"):
    for _d in ("", "_distilled"):
        register_arch(ArchSpec(f"deit_{_size}{_d}_patch16_224", "deit", f"deit_{_size}{_d}_patch16_224"))

# Small images: 28 px gray (Fashion-MNIST, 7x7 patches of 4 px) and 32 px RGB (CIFAR-like).
_SMALL_28 = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10)
_SMALL_32 = dict(img_size=32, patch_size=4, in_chans=3, num_classes=10)
for _size in ("tiny", "small"):
    for _d in ("", "_distilled"):
        _timm = f"deit_{_size}{_d}_patch16_224"
        register_arch(ArchSpec(f"deit_{_size}{_d}_patch4_28", "deit", _timm, _SMALL_28))
        register_arch(ArchSpec(f"deit_{_size}{_d}_patch4_32", "deit", _timm, _SMALL_32))
