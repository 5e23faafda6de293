"""Fully quantized multi-head attention with the Information Rectification Module (IRM).

qkv and proj are QuantLinear; q, k, v and the post-softmax probabilities are quantized per head
(ActQuant with H steps and zero points) so both attention matmuls are integer matmuls:
    S = scale * Q_a(q~) Q_a(k~)^T (+ rel_pos_bias) (+ mask),  P = softmax(S),  O = Q_a(P) Q_a(v)
IRM: q~ = LayerNorm_d(q) with learned (weight, bias) of shape [head_dim], shared across heads,
exactly the official code's `nn.LayerNorm(head_dim)`; docs/training.md shows it equals the
paper's Q_a((q - mu + beta) / (gamma sqrt(var + eps))) up to reparameterisation.

`QuantAttention` replaces timm's `Attention` (DeiT); `QuantWindowAttention` replaces timm's Swin
`WindowAttention` (relative position bias table, shifted-window mask passed by the block).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from qvit.quantizers import ActQuant, QuantLinear


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
    ):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.attn_dim = num_heads * head_dim
        self.scale = head_dim**-0.5
        self.w_bits, self.a_bits = w_bits, a_bits
        self.qkv = QuantLinear(dim, 3 * self.attn_dim, bias=qkv_bias, w_bits=w_bits, a_bits=a_bits)
        self.proj = QuantLinear(self.attn_dim, dim, bias=True, w_bits=w_bits, a_bits=a_bits)
        self.irm = irm
        self.norm_q = nn.LayerNorm(head_dim, eps=irm_eps) if irm else None
        self.norm_k = nn.LayerNorm(head_dim, eps=irm_eps) if irm else None
        self.q_act = ActQuant(a_bits, channels=num_heads)
        self.k_act = ActQuant(a_bits, channels=num_heads)
        self.v_act = ActQuant(a_bits, channels=num_heads)
        self.p_act = ActQuant(a_bits, channels=num_heads)  # post-softmax probabilities, unsigned
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)
        # DGD: when True, forward keeps the rectified (pre-quantization) q~ and k~ [B, H, N, d].
        self.record_qk = False
        self.recorded_qk: tuple[torch.Tensor, torch.Tensor] | None = None

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
        if self.irm:
            q, k = self.norm_q(q), self.norm_k(k)
        if self.record_qk:
            self.recorded_qk = (q, k)
        q, k, v = self.q_act(q), self.k_act(k), self.v_act(v)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if bias is not None:
            attn = attn + bias
        attn = self.p_act(attn.softmax(dim=-1))
        attn = self.attn_drop(attn)
        out = (attn @ v).transpose(1, 2).reshape(B, N, self.attn_dim)
        return self.proj_drop(self.proj(out))

    def _int_form(self) -> dict:
        irm = None
        if self.irm:
            irm = dict(
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


class QuantAttention(QuantAttentionCore):
    """Drop-in for timm `Attention` (DeiT / ViT blocks)."""

    @classmethod
    def from_timm(cls, m: nn.Module, w_bits: int, a_bits: int, irm: bool = True) -> "QuantAttention":
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
    def from_timm(cls, m: nn.Module, w_bits: int, a_bits: int, irm: bool = True) -> "QuantWindowAttention":
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
