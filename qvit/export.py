"""Export a fully quantized Q-ViT (torch) as an integer model (docs/integer-model.md).

The exporter walks the quantized timm model by its timm names and asks each quantized module for
its integer form (`int_form()` / `int_params()`, qvit/quantizers.py and qvit/attention.py). What
differs per family (which modules, in which layout) is the family's `export` (qvit/models/deit.py,
swin.py), which lays the model out with the layout the synthetic builders share
(`qvit_compile.intmodel.lay_out_deit` / `lay_out_swin`); this module is the generic part.

    export_model(model)             a quantized torch model in memory
    export_checkpoint(path)         a `qvit train` checkpoint directory
    export_random(arch, bits)       a random-init named architecture (no pretrained weights here)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from qvit_compile import intmodel
from qvit_compile.intmodel import GraphBuilder, IntModel
from qvit_edge.clikit import UserError


class ExportError(UserError):
    """A model the integer format cannot express (one line)."""


class _TorchSource:
    """Integer forms from the modules of a quantized torch model (the layouts' `src`)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def _module(self, name: str) -> nn.Module:
        try:
            return self.model.get_submodule(name)
        except AttributeError:
            raise ExportError(f"the model has no module {name!r}") from None

    def linear(self, name, n, k, bias, role):
        m = self._module(name)
        if not hasattr(m, "int_form"):
            raise ExportError(
                f"{name} is a {type(m).__name__}, not a quantized layer (was the model quantized?)"
            )
        form = m.int_form()
        if form["weight"].ndim != 2 or form["weight"].shape[0] != n:
            raise ExportError(f"{name}: integer weight {list(form['weight'].shape)} does not fit [{n}, {k}]")
        return form

    def attention(self, name, dim, heads):
        m = self._module(name)
        if not hasattr(m, "int_form"):
            raise ExportError(f"{name} is a {type(m).__name__}, not a quantized attention")
        return m.int_form()

    def layernorm(self, name, dim):
        m = self._module(name)
        if not isinstance(m, nn.LayerNorm) or m.weight is None or m.bias is None:
            raise ExportError(f"{name} must be an affine nn.LayerNorm, got {type(m).__name__}")
        return _np(m.weight), _np(m.bias), float(m.eps)

    def tensor(self, name, shape):
        t = getattr(self.model, name, None)
        if t is None:
            raise ExportError(f"the model has no {name}")
        a = _np(t)
        if a.shape != tuple(shape):
            raise ExportError(f"{name} has shape {list(a.shape)}, expected {list(shape)}")
        return a


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().float().numpy().astype(np.float32)


def gelu_clip(mlp: nn.Module):
    """The clip of an MLP's GELU (None: plain exact GELU), as the integer model's gelu op has it."""
    act = mlp.act
    if hasattr(act, "clip"):
        return act.clip
    if isinstance(act, nn.GELU) and act.approximate == "none":
        return None
    raise ExportError(f"MLP activation {type(act).__name__} is not the exact GELU the integer model has")


def _bits(model: nn.Module) -> dict:
    q = getattr(model, "qvit_config", None)
    if q is not None and q.quant.quantized:
        return {
            "weight": q.quant.w_bits,
            "act": q.quant.a_bits,
            "embed": q.quant.embed_bits,
            "head": q.quant.head_bits,
        }
    raise ExportError("the model is not quantized (full-precision models have no integer form)")


def default_input(model: nn.Module) -> dict:
    """Input preprocessing when no checkpoint says otherwise: timm's pretrained_cfg, with mean/std
    of 0.5 per channel when its (RGB) values do not fit the channel count."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    pe = model.patch_embed
    c = pe.proj.in_channels
    mean, std = list(cfg.get("mean", ())), list(cfg.get("std", ()))
    if len(mean) != c or len(std) != c:
        mean, std = [0.5] * c, [0.5] * c
    return {
        "channels": c,
        "size": list(pe.img_size),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "interpolation": cfg.get("interpolation", "bicubic"),
        "crop_pct": float(cfg.get("crop_pct", 1.0)) if pe.img_size[0] >= 64 else 1.0,
    }


def export_model(
    model: nn.Module,
    *,
    input_cfg: dict | None = None,
    classes: list[str] | None = None,
    arch: str | None = None,
) -> IntModel:
    """The integer model of a quantized qvit model (DeiT or Swin)."""
    qc = getattr(model, "qvit_config", None)
    if qc is None:
        raise ExportError("not a qvit model (build it with qvit.models.create_model)")
    bits = _bits(model)
    from qvit.checkpoint import check_tensors

    # NaN / Inf weights or an activation step <= 0 would export a model that answers confidently
    check_tensors(model.state_dict(), "the model")
    model = model.eval()
    from qvit.models import get_family

    try:
        family = get_family(qc.family)
    except ValueError as e:
        raise ExportError(str(e)) from None
    b = GraphBuilder()
    extra = family.export(model, b, _TorchSource(model))
    try:
        return b.build(
            arch=arch or qc.arch,
            family=qc.family,
            bits=bits,
            input=input_cfg or default_input(model),
            num_classes=model.num_classes,
            classes=classes,
            irm=bool(qc.quant.irm),
            **extra,
        )
    except intmodel.IntModelError as e:
        raise ExportError(f"exported model is inconsistent: {e}") from None


def export_checkpoint(path: str, model: nn.Module | None = None) -> IntModel:
    """A `qvit train` checkpoint directory -> integer model (input preprocessing and class
    names from the checkpoint's config). `model`: the checkpoint's model if already loaded."""
    from qvit.checkpoint import load_model, read_config

    if model is None:
        model, config = load_model(path)
    else:
        config = read_config(path)
    data = config.get("data") or {}
    input_cfg = default_input(model)
    for key in ("mean", "std", "interpolation", "crop_pct"):
        if data.get(key) is not None:
            input_cfg[key] = data[key]
    classes = data.get("classes") or config.get("classes")
    return export_model(model, input_cfg=input_cfg, classes=classes)


def export_random(
    arch: str,
    bits: int,
    *,
    seed: int = 0,
    irm: bool = True,
    irm_stat: str = "token",
    calib_batch: int = 8,
    **timm_kwargs,
) -> tuple[IntModel, nn.Module]:
    """A random-init named architecture at `bits` (for benchmarks and tests: nothing pretrained
    can be downloaded). The quantizers initialise from one forward pass on random images.
    Returns the integer model and the torch model it came from."""
    from qvit.models import create_model

    torch.manual_seed(seed)
    try:
        model = create_model(arch, bits=bits, irm=irm, irm_stat=irm_stat, **timm_kwargs)
    except ValueError as e:
        raise ExportError(str(e)) from None
    model.eval()
    pe = model.patch_embed
    x = torch.randn(
        calib_batch, pe.proj.in_channels, *pe.img_size, generator=torch.Generator().manual_seed(seed)
    )
    with torch.no_grad():
        model(x)
    return export_model(model), model


def check_images(config: dict, model: nn.Module, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """n normalised evaluation images (and labels) for `check_agreement`: the first n of the
    checkpoint's data set (its test split), or random images when it names none."""
    spec = (config.get("train") or {}).get("data")
    pe = model.patch_embed
    if spec:
        from torch.utils.data import DataLoader, Subset

        from qvit.data import ArraySet, input_of, load_dataset

        ds = load_dataset(spec, "test", **input_of(config))
        n = min(n, len(ds))
        if isinstance(ds, ArraySet):
            x, y = ds.batch(torch.arange(n), int(pe.img_size[0]), train=False)
        else:
            data = config.get("data") or {}
            tds = ds.torch_dataset(
                int(pe.img_size[0]),
                train=False,
                crop_pct=data.get("crop_pct", 0.875),
                interpolation=data.get("interpolation", "bicubic"),
            )
            x, y = next(iter(DataLoader(Subset(tds, range(n)), batch_size=n)))
        return x.numpy().astype(np.float32), y.numpy()
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, pe.proj.in_channels, *pe.img_size, generator=g).numpy(), None


def check_agreement(
    model: nn.Module, im: IntModel, images: np.ndarray, labels=None, onnx_model=None, batch: int = 50
) -> dict:
    """Run the fake-quant PyTorch model, the integer reference and (given an ONNX model) ONNX
    Runtime on the same images. Per runner: top-1 agreement with PyTorch, largest logit
    difference (absolute, and relative to the largest |logit|), top-1 accuracy when labels are given."""
    from qvit_compile.intmodel import reference

    model = model.eval()
    runners = {"reference": lambda x: reference.run(im, x)}
    if onnx_model is not None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        sess = ort.InferenceSession(onnx_model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        runners["onnxruntime"] = lambda x: sess.run(None, {"image": x})[0]
    outs = {k: [] for k in ["torch", *runners]}
    for i in range(0, len(images), batch):
        x = np.ascontiguousarray(images[i : i + batch], np.float32)
        with torch.no_grad():
            outs["torch"].append(model(torch.from_numpy(x)).numpy())
        for k, f in runners.items():
            outs[k].append(f(x))
    t = np.concatenate(outs["torch"])
    result = {"images": int(len(images))}
    if labels is not None:
        result["torch_top1"] = float((t.argmax(1) == labels).mean())
    for k in runners:
        r = np.concatenate(outs[k])
        d = np.abs(t - r).max()
        result[k] = {
            "top1_agreement": float((t.argmax(1) == r.argmax(1)).mean()),
            "max_abs_logit_diff": float(d),
            "max_rel_logit_diff": float(d / max(np.abs(t).max(), 1e-12)),
        }
        if labels is not None:
            result[k]["top1"] = float((r.argmax(1) == labels).mean())
    return result
