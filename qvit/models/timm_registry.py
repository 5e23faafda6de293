"""Q-ViT models in timm's own registry: `timm.create_model("qvit_deit_tiny_patch4_28", bits=2)`.

Every architecture of `qvit.models.list_models()` is registered as `qvit_<name>` (importing `qvit`
does it when timm is installed), with a pretrained_cfg that describes its real input: 28 px
models take 1-channel Fashion-MNIST-normalised images, 32 px models CIFAR-normalised RGB, 224 px
models ImageNet's, so `timm.data.resolve_data_config(model=m)` prepares images the way the model
was trained. Keyword arguments are qvit's (bits, w_bits, a_bits, irm, irm_stat, embed_bits,
head_bits, gelu_clip) and timm's (num_classes resets the head, in_chans, img_size, depth, ...).

Nothing is ever downloaded: `pretrained=True` takes a local file, as timm does for local weights:
`timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file="weights.safetensors"))`
(or `checkpoint_path=` for a full checkpoint, which timm loads after building).
"""
from __future__ import annotations

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import register_model

from qvit.models import create_model
from qvit.models.registry import ArchSpec, get_arch, list_models

PREFIX = "qvit_"
FASHION_MNIST = ((0.286,), (0.353,))
CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
QUANT_KEYS = ("bits", "w_bits", "a_bits", "embed_bits", "head_bits", "irm", "irm_stat", "gelu_clip")

# Read by timm's register_model: the pretrained cfg of each entrypoint, keyed by its name.
default_cfgs: dict[str, dict] = {}


def pretrained_cfg(spec: ArchSpec, in_chans: int | None = None, img_size=None,
                   num_classes: int | None = None) -> dict:
    """timm's pretrained_cfg for `spec`, with the overrides a create_model call makes."""
    d = spec.defaults
    size = img_size or d.get("img_size", 224)
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    chans = in_chans or d.get("in_chans", 3)
    if h <= 28 and chans == 1:
        mean, std = FASHION_MNIST
    elif h <= 32:
        mean, std = CIFAR10
    else:
        mean, std = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    if len(mean) != chans:  # e.g. a 28 px model asked for 3 channels: the same statistics per channel
        mean, std = (sum(mean) / len(mean),) * chans, (sum(std) / len(std),) * chans
    small = h <= 32
    return {
        "url": "",
        "num_classes": num_classes or d.get("num_classes", 1000),
        "input_size": (chans, h, w),
        "pool_size": None,
        "crop_pct": 1.0 if small else 0.875,
        "interpolation": "bilinear" if small else "bicubic",
        "fixed_input_size": True,
        "mean": tuple(mean),
        "std": tuple(std),
        "first_conv": "patch_embed.proj",
        "classifier": ("head", "head_dist") if "distilled" in spec.name else "head",
        "license": "apache-2.0",
    }


def _entrypoint(spec: ArchSpec):
    name = PREFIX + spec.name

    def entrypoint(pretrained: bool = False, **kwargs):
        overlay = kwargs.pop("pretrained_cfg_overlay", None) or {}
        given = kwargs.pop("pretrained_cfg", None)
        kwargs.pop("cache_dir", None)
        file = overlay.get("file") or (given.get("file") if isinstance(given, dict) else None)
        if pretrained and not file:
            raise ValueError(f"{name}: no pretrained weights can be downloaded; give a local file: "
                             f"timm.create_model({name!r}, pretrained=True, "
                             "pretrained_cfg_overlay=dict(file='weights.safetensors'))")
        quant = {k: kwargs.pop(k) for k in QUANT_KEYS if k in kwargs}
        if not any(k in quant for k in ("bits", "w_bits", "a_bits")):
            quant["bits"] = 4  # a qvit_ name is a quantized model; 4 bits unless told
        model = create_model(spec.name, init_from=file if pretrained else None, **quant, **kwargs)
        cfg = pretrained_cfg(spec, kwargs.get("in_chans"), kwargs.get("img_size"), kwargs.get("num_classes"))
        cfg.update({k: v for k, v in overlay.items() if k != "file"})
        cfg.update(architecture=name, tag=None)
        model.pretrained_cfg = model.default_cfg = cfg
        return model

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"Fully quantized Q-ViT from {spec.name} ({spec.family}); qvit.models.timm_registry."
    return entrypoint


def register_all() -> list[str]:
    names = []
    for arch in list_models():
        spec = get_arch(arch)
        name = PREFIX + arch
        default_cfgs[name] = pretrained_cfg(spec)
        register_model(_entrypoint(spec))
        names.append(name)
    return names


REGISTERED = register_all()
