"""The architectures qvit knows: timm DeiT / Swin, plus small variants for 28-32 px images."""

from __future__ import annotations

from dataclasses import dataclass, field

import timm
import torch.nn as nn


@dataclass(frozen=True)
class ArchSpec:
    name: str
    family: str  # "deit" or "swin"
    timm_name: str  # timm architecture it is built from (pretrained=False, always)
    defaults: dict = field(default_factory=dict)  # timm kwargs that make the variant

    def build(self, **kwargs) -> nn.Module:
        model = timm.create_model(self.timm_name, pretrained=False, **{**self.defaults, **kwargs})
        if self.family == "deit" and hasattr(model, "set_distilled_training"):
            model.set_distilled_training(True)  # train mode returns (cls, dist) logits; eval their mean
        return model


_ARCHS: dict[str, ArchSpec] = {}


def register_arch(spec: ArchSpec) -> ArchSpec:
    _ARCHS[spec.name] = spec
    return spec


def get_arch(name: str) -> ArchSpec:
    if name not in _ARCHS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(_ARCHS))}")
    return _ARCHS[name]


def list_models() -> list[str]:
    return sorted(_ARCHS)


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
