"""Model registry, timm-style: `create_model("qvit_deit_tiny_patch16_224", bits=2, irm=True)`.

A name is an architecture from `list_models()`; the prefix `qvit_` (or any `bits`) asks for the
fully quantized Q-ViT made from it by module surgery, no prefix and no bits for the full-precision
timm model. Nothing is ever downloaded: weights come from a local file (`init_from`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

# Each family file registers the family and its architectures (timm's one family per file).
from qvit.models import deit, swin  # noqa: F401
from qvit.models.registry import (  # noqa: F401
    ArchSpec,
    Family,
    get_arch,
    get_family,
    list_models,
    register_arch,
    register_family,
)

__all__ = [
    "create_model", "list_models", "register_arch", "register_family", "ArchSpec", "Family", "get_arch",
    "get_family", "QConfig",
]


@dataclass
class QConfig:
    """How a model is quantized (None bits = full precision). Stored in every checkpoint."""

    w_bits: int | None = None
    a_bits: int | None = None
    embed_bits: int = 8
    head_bits: int = 8
    irm: bool = True
    gelu_clip: float | None = 10.0
    irm_stat: str = "token"  # IRM statistics: "token" (official code's LayerNorm) or "head" (qvit.attention)

    @property
    def quantized(self) -> bool:
        return self.w_bits is not None

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class ModelConfig:
    arch: str
    family: str
    quant: QConfig
    timm_kwargs: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "arch": self.arch,
            "family": self.family,
            "quant": self.quant.to_json(),
            "timm_kwargs": dict(self.timm_kwargs),
        }

    @classmethod
    def from_json(cls, d: dict) -> "ModelConfig":
        return cls(d["arch"], d["family"], QConfig(**d["quant"]), dict(d.get("timm_kwargs", {})))


def create_model(
    name: str,
    bits: int | None = None,
    *,
    w_bits: int | None = None,
    a_bits: int | None = None,
    embed_bits: int = 8,
    head_bits: int = 8,
    irm: bool = True,
    gelu_clip: float | None = 10.0,
    init_from: str | None = None,
    irm_stat: str = "token",
    **timm_kwargs,
) -> nn.Module:
    """Build a model. bits sets weights and activations of the blocks (1-4 usual); w_bits / a_bits
    override each. timm_kwargs (img_size, in_chans, num_classes, depth, embed_dim, ...) go to timm.
    init_from: a local timm checkpoint or safetensors file loaded before nothing else touches the
    weights (full-precision keys map one to one; quantizer and IRM parameters are new)."""
    arch = name[len("qvit_") :] if name.startswith("qvit_") else name
    if name.startswith("qvit_") and bits is None and w_bits is None and a_bits is None:
        bits = 4
    w_bits = w_bits if w_bits is not None else bits
    a_bits = a_bits if a_bits is not None else bits
    if (w_bits is None) != (a_bits is None):
        raise ValueError("give both weight and activation bits (or bits)")
    q = QConfig(w_bits, a_bits, embed_bits, head_bits, irm, gelu_clip, irm_stat)
    return build(ModelConfig(arch, get_arch(arch).family, q, timm_kwargs), init_from=init_from)


def build(cfg: ModelConfig, init_from: str | None = None) -> nn.Module:
    from qvit.checkpoint import load_weights_into

    spec = get_arch(cfg.arch)
    model = spec.build(**cfg.timm_kwargs)
    if cfg.quant.quantized:
        q = cfg.quant
        get_family(spec.family).quantize(
            model, q.w_bits, q.a_bits, q.embed_bits, q.head_bits, irm=q.irm, gelu_clip=q.gelu_clip,
            irm_stat=q.irm_stat,
        )
    model.qvit_config = cfg
    if init_from:
        load_weights_into(model, init_from)
    return model
