"""The registries, timm-style: model families and the architectures built from them.

A family (qvit/models/deit.py, swin.py) registers what differs between families: how to quantize
a timm model of it, how to export one into the integer graph, and what to set once timm has
built it. An architecture is a timm model of a family plus the kwargs that make the variant;
each family file registers its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import timm
import torch.nn as nn


@dataclass(frozen=True)
class Family:
    name: str
    # (model, w_bits, a_bits, embed_bits, head_bits, irm=, gelu_clip=, irm_stat=) -> the model, in place
    quantize: Callable[..., nn.Module]
    # (quantized model, GraphBuilder, source) -> extra config entries of the integer model
    export: Callable[..., dict]
    prepare: Callable[[nn.Module], None] | None = None  # after timm has built the model


@dataclass(frozen=True)
class ArchSpec:
    name: str
    family: str  # a registered Family's name
    timm_name: str  # timm architecture it is built from (pretrained=False, always)
    defaults: dict = field(default_factory=dict)  # timm kwargs that make the variant

    def build(self, **kwargs) -> nn.Module:
        model = timm.create_model(self.timm_name, pretrained=False, **{**self.defaults, **kwargs})
        prepare = get_family(self.family).prepare
        if prepare is not None:
            prepare(model)
        return model


_FAMILIES: dict[str, Family] = {}
_ARCHS: dict[str, ArchSpec] = {}


def register_family(family: Family) -> Family:
    _FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    if name not in _FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[name]


def register_arch(spec: ArchSpec) -> ArchSpec:
    _ARCHS[spec.name] = spec
    return spec


def get_arch(name: str) -> ArchSpec:
    if name not in _ARCHS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(_ARCHS))}")
    return _ARCHS[name]


def list_models() -> list[str]:
    return sorted(_ARCHS)
