"""Swin, the training side: its architectures, the window attention that replaces timm's
`WindowAttention` (relative position bias, shifted-window mask), the surgery that quantizes a
timm Swin, and the walk that exports one into the integer graph (the layout itself is
qvit_compile.intmodel.swin's, shared with the synthetic models)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from qvit.attention import QuantAttentionCore
from qvit.export import ExportError, gelu_clip
from qvit.models.registry import ArchSpec, Family, register_arch, register_family
from qvit.quantizers import QuantConv2d, QuantLinear
from qvit.surgery import quantize_mlp
from qvit_compile.intmodel import compact
from qvit_compile.intmodel.swin import lay_out_swin


class QuantWindowAttention(QuantAttentionCore):
    """Drop-in for timm Swin `WindowAttention`: per-head relative position bias + shift mask."""

    def __init__(self, *args, window_size: tuple[int, int], **kwargs):
        super().__init__(*args, **kwargs)
        self.window_size = tuple(window_size)
        self.window_area = self.window_size[0] * self.window_size[1]
        wh, ww = self.window_size
        table = torch.zeros((2 * wh - 1) * (2 * ww - 1), self.num_heads)
        self.relative_position_bias_table = nn.Parameter(table)
        index = torch.zeros(self.window_area, self.window_area, dtype=torch.long)
        self.register_buffer("relative_position_index", index, persistent=False)

    @classmethod
    def from_timm(cls, m: nn.Module, w_bits: int, a_bits: int, irm: bool = True,
                  irm_stat: str = "token") -> "QuantWindowAttention":
        dim = m.qkv.in_features
        head_dim = m.qkv.out_features // (3 * m.num_heads)
        q = cls(
            dim,
            m.num_heads,
            head_dim,
            m.qkv.bias is not None,
            w_bits,
            a_bits,
            irm=irm,
            attn_drop=m.attn_drop.p,
            proj_drop=m.proj_drop.p,
            window_size=m.window_size,
            irm_stat=irm_stat,
        )
        q.to(m.qkv.weight.device)
        q._copy_linear(m.qkv, m.proj)
        with torch.no_grad():
            q.relative_position_bias_table.copy_(m.relative_position_bias_table)
            q.relative_position_index.copy_(m.relative_position_index)
        return q

    def rel_pos_bias(self) -> torch.Tensor:
        """[H, T, T] gathered from the table (timm's _get_rel_pos_bias without the batch axis)."""
        idx = self.relative_position_index.view(-1)
        bias = self.relative_position_bias_table[idx].view(self.window_area, self.window_area, -1)
        return bias.permute(2, 0, 1).contiguous()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B_, N, _ = x.shape
        bias = self.rel_pos_bias().unsqueeze(0)  # [1, H, N, N]
        if mask is not None:  # [nW, N, N]; window i of batch row b' is b' % nW (timm order)
            nw = mask.shape[0]
            bias = (bias.unsqueeze(0) + mask.unsqueeze(1).unsqueeze(0)).expand(B_ // nw, -1, -1, -1, -1)
            bias = bias.reshape(B_, self.num_heads, N, N)
        return self.attend(x, bias)

    @torch.no_grad()
    def int_form(self) -> dict:
        d = self._int_form()
        d["rel_pos_bias"] = _np(self.rel_pos_bias())
        return d


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


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
            quantize_mlp(blk.mlp, w_bits, a_bits, gelu_clip)
    if isinstance(model.head.fc, nn.Linear):
        model.head.fc = QuantLinear.from_linear(model.head.fc, head_bits, head_bits)
    return model


def _spec(model: nn.Module) -> dict:
    pe = model.patch_embed
    if getattr(model, "absolute_pos_embed", None) is not None:
        raise ExportError("Swin with absolute position embedding is not supported by the integer format")
    if (
        getattr(model.head, "global_pool", None) is not None
        and getattr(model.head.global_pool, "pool_type", "avg") != "avg"
    ):
        raise ExportError("Swin pooling other than the average is not supported by the integer format")
    stages, embed_dim = [], pe.proj.out_channels
    for layer in model.layers:
        blocks = []
        for blk in layer.blocks:
            blocks.append(
                {"window": compact(blk.window_size), "shift": compact(blk.shift_size)}
            )
        blk0 = layer.blocks[0]
        stages.append(
            {
                "dim": blk0.norm1.normalized_shape[0],
                "heads": blk0.attn.num_heads,
                "downsample": not isinstance(layer.downsample, nn.Identity),
                "blocks": blocks,
                "grid": tuple(blk0.input_resolution),
            }
        )
    blk0 = model.layers[0].blocks[0]
    return {
        "in_chans": pe.proj.in_channels,
        "img_size": tuple(pe.img_size),
        "patch": pe.proj.kernel_size[0],
        "embed_dim": embed_dim,
        "patch_norm": not isinstance(pe.norm, nn.Identity),
        "num_classes": model.num_classes,
        "gelu_clip": gelu_clip(blk0.mlp),
        "mlp_ratio": blk0.mlp.fc1.out_features / blk0.norm1.normalized_shape[0],
        "stages": stages,
    }


def _check_grids(spec: dict) -> None:
    """The layout derives each stage's grid; it must be the one timm's blocks were built for."""
    p = spec["patch"]
    grid = (spec["img_size"][0] // p, spec["img_size"][1] // p)
    for i, st in enumerate(spec["stages"]):
        if st["downsample"]:
            grid = ((grid[0] + 1) // 2, (grid[1] + 1) // 2)
        if tuple(st["grid"]) != grid:
            raise ExportError(f"Swin stage {i} runs on a {st['grid']} grid, expected {grid}")


def export_swin(model: nn.Module, b, src) -> dict:
    """Lay a quantized Swin out into the GraphBuilder `b`; -> the config entries Swin adds (none)."""
    spec = _spec(model)
    _check_grids(spec)
    lay_out_swin(b, src, spec)
    return {}


register_family(Family("swin", quantize_swin, export_swin))

for _size in ("tiny", "small"):
    register_arch(ArchSpec(f"swin_{_size}_patch4_window7_224", "swin", f"swin_{_size}_patch4_window7_224"))
# 28 px: 2 px patches -> 14x14 tokens, 7x7 windows (shifted in stage 1), one merge to 7x7.
register_arch(
    ArchSpec(
        "swin_tiny_patch2_window7_28",
        "swin",
        "swin_tiny_patch4_window7_224",
        dict(
            img_size=28,
            patch_size=2,
            window_size=7,
            in_chans=1,
            num_classes=10,
            depths=(2, 6),
            num_heads=(3, 6),
        ),
    )
)
# 32 px: 2 px patches -> 16x16 tokens, 4x4 windows, merges to 8x8 and 4x4.
register_arch(
    ArchSpec(
        "swin_tiny_patch2_window4_32",
        "swin",
        "swin_tiny_patch4_window7_224",
        dict(
            img_size=32,
            patch_size=2,
            window_size=4,
            in_chans=3,
            num_classes=10,
            depths=(2, 2, 6),
            num_heads=(3, 6, 12),
        ),
    )
)
