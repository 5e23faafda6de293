"""Checkpoints: safetensors tensors + a JSON config, written atomically; never pickle.

A checkpoint is a directory:
    model.safetensors   the model's state dict (float32 weights, quantizer steps/offsets)
    config.json         model config (arch, bits, IRM, timm kwargs), data (image size,
                        normalisation, class names) and training progress
    train_state.safetensors + train_state.json   (training runs only) optimizer and scheduler
                        state, epoch/step, RNG states: what `qvit train --resume` needs
Every file is written to a temporary name and renamed; the directory is built as `NAME.writing`,
renamed to `NAME.new` once complete, and swapped in by renames (see save_checkpoint), so however
often a run is killed, at any moment, a complete checkpoint exists under a name readers find.

Reading validates what would otherwise be used silently: config.json's format version and field
types (a bit width `true`, a negative image size), and the tensors (dtype exactly the model's,
no NaN / Inf, quantizer steps > 0). Every problem is one UserError line naming the field.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from qvit_edge.clikit import UserError

MODEL_FILE, CONFIG_FILE = "model.safetensors", "config.json"
STATE_FILE, STATE_JSON = "train_state.safetensors", "train_state.json"
FORMAT, FORMAT_VERSION = "qvit-checkpoint", 1
# The names of one checkpoint NAME on disk: complete ones, newest first (readers take the first
# that exists), then the ones that are never read.
NEW, OLD, WRITING, TRASH = ".new", ".old", ".writing", ".trash"


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from a checkpoint directory, a .safetensors file, or a timm/torch checkpoint
    (loaded with weights_only=True: plain tensors only, no code)."""
    p = Path(path)
    if p.is_dir():
        p = p / MODEL_FILE
    if not p.exists():
        raise UserError(f"no such checkpoint: {path}")
    try:
        if p.suffix == ".safetensors":
            sd = load_file(str(p))
        else:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except UserError:
        raise
    except Exception as e:  # corrupt file, pickled code, wrong format
        first = str(e).splitlines()[0] if str(e) else ""
        raise UserError(f"cannot read weights from {path}: {type(e).__name__}: {first}") from None
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{path} holds no state dict of tensors")
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in sd.items()}


def load_weights_into(model: nn.Module, path: str | os.PathLike) -> None:
    """Full-precision or Q-ViT weights into a model; shapes must match, every file key must be
    known to the model; keys only the model has (quantizers, IRM) keep their init."""
    sd = read_state_dict(path)
    own = model.state_dict()
    check_tensors(sd, path)
    unknown = [k for k in sd if k not in own]
    if unknown:
        raise UserError(f"{path} does not fit this model: unknown keys such as {unknown[:3]}")
    bad = [k for k, v in sd.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise UserError(
            f"{path} does not fit this model: {k} is {tuple(sd[k].shape)}, model has {tuple(own[k].shape)}"
        )
    missing_core = [k for k in own if k not in sd and not _is_new_in_qvit(k)]
    if missing_core:
        raise UserError(f"{path} lacks weights of this model, such as {missing_core[:3]}")
    model.load_state_dict(sd, strict=False)


def check_tensors(sd: dict[str, torch.Tensor], where, own: dict[str, torch.Tensor] | None = None) -> None:
    """No NaN / Inf anywhere; activation quantizer steps > 0; given the model's own state dict
    `own`, each dtype exactly the model's (a float16 / float64 / int8 tensor is not cast).

    Learned steps are used as max(step, MIN_STEP) (qvit/quantizers.py). For a weight step (one
    output channel) that is how training prunes a channel: its weights quantize to ~0, and real
    runs do it (models/fmnist_deit_tiny_w4a4 has three), so it is kept. An activation step <= 0
    turns a whole tensor (or head) into a constant: no trained model has one, it is refused."""
    for k, v in sd.items():
        if own is not None and k in own and v.dtype != own[k].dtype:
            have, want = str(v.dtype).replace("torch.", ""), str(own[k].dtype).replace("torch.", "")
            raise UserError(f"{where}: tensor {k} is {have}, expected {want}")
        if not v.is_floating_point():
            continue
        if not bool(torch.isfinite(v).all()):
            raise UserError(f"{where}: tensor {k} holds NaN or Inf values")
        if k.endswith(".step") and not k.endswith(".w_quant.step") and not bool((v > 0).all()):
            bad = float(v[~(v > 0)].flatten()[0])
            raise UserError(f"{where}: activation quantizer step {k} is {bad:g} (must be > 0)")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# timm arguments that are sizes or counts: a whole number >= 1, or a list of them (Swin depths).
SIZE_KWARGS = (
    "img_size",
    "patch_size",
    "in_chans",
    "num_classes",
    "embed_dim",
    "depth",
    "depths",
    "num_heads",
    "window_size",
)


def check_timm_kwargs(kwargs, where: str) -> None:
    """Sizes and counts whole numbers >= 1; every other number finite."""
    if not isinstance(kwargs, dict):
        raise UserError(f"{where} is not an object")
    for k, v in kwargs.items():
        if k in SIZE_KWARGS:
            vals = v if isinstance(v, (list, tuple)) else [v]
            if not vals or not all(_is_int(x) and x >= 1 for x in vals):
                raise UserError(f"{where}: {k}={v!r} is not a whole number >= 1 (or a list of them)")
        elif isinstance(v, float) and not math.isfinite(v):
            raise UserError(f"{where}: {k}={v!r} is not a finite number")


def _bits_ok(v, optional: bool = False) -> bool:
    return (optional and v is None) or (_is_int(v) and 1 <= v <= 8)


def validate_config(config, where) -> None:
    """config.json: a known format version and the fields that build the model and feed the
    export, each of the type and range the format says (one UserError line naming the field).
    A config without `format` (written by hand, or by tests) is read as version 1."""
    if not isinstance(config, dict):
        raise UserError(f"{where} is not a JSON object")
    fmt, ver = config.get("format", FORMAT), config.get("format_version", FORMAT_VERSION)
    if fmt != FORMAT:
        raise UserError(f"{where}: format {fmt!r} is not {FORMAT!r}")
    if not _is_int(ver) or ver != FORMAT_VERSION:
        raise UserError(
            f"{where}: format_version {ver!r} is not supported (this version reads {FORMAT_VERSION})"
        )
    model = config.get("model")
    if model is not None:
        if not isinstance(model, dict):
            raise UserError(f"{where}: model is not an object")
        for key in ("arch", "family"):
            if not isinstance(model.get(key), str):
                raise UserError(f"{where}: model.{key}={model.get(key)!r} is not a name")
        q = model.get("quant")
        if not isinstance(q, dict):
            raise UserError(f"{where}: model.quant is not an object")
        for key, optional in (
            ("w_bits", True),
            ("a_bits", True),
            ("embed_bits", False),
            ("head_bits", False),
        ):
            if key in q and not _bits_ok(q[key], optional):
                null = " (or null: full precision)" if optional else ""
                raise UserError(f"{where}: model.quant.{key}={q[key]!r} is not a bit width in 1..8{null}")
        if (q.get("w_bits") is None) != (q.get("a_bits") is None):
            raise UserError(f"{where}: model.quant has w_bits without a_bits (or the reverse)")
        if "irm" in q and not isinstance(q["irm"], bool):
            raise UserError(f"{where}: model.quant.irm={q['irm']!r} is not true or false")
        clip = q.get("gelu_clip")
        if clip is not None and not (_is_number(clip) and clip > 0):
            raise UserError(f"{where}: model.quant.gelu_clip={clip!r} is not a number > 0 (or null: no clip)")
        check_timm_kwargs(model.get("timm_kwargs", {}), f"{where}: model.timm_kwargs")
    data = config.get("data")
    if data is not None:
        if not isinstance(data, dict):
            raise UserError(f"{where}: data is not an object")
        if "img_size" in data and not (_is_int(data["img_size"]) and data["img_size"] >= 1):
            raise UserError(f"{where}: data.img_size={data['img_size']!r} is not a whole number >= 1")
        for key in ("mean", "std"):
            v = data.get(key)
            if v is not None and not (isinstance(v, list) and v and all(_is_number(x) for x in v)):
                raise UserError(f"{where}: data.{key}={v!r} is not a list of finite numbers")
        if data.get("std") is not None and min(data["std"]) <= 0:
            raise UserError(f"{where}: data.std={data['std']!r} must be > 0")
        crop = data.get("crop_pct")
        if crop is not None and not (_is_number(crop) and 0 < crop <= 4):
            raise UserError(f"{where}: data.crop_pct={crop!r} is not a number in (0, 4]")
        interp = data.get("interpolation")
        if interp is not None and not isinstance(interp, str):
            raise UserError(f"{where}: data.interpolation={interp!r} is not a name")
    for v, name in ((config.get("classes"), "classes"), ((data or {}).get("classes"), "data.classes")):
        if v is not None and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            raise UserError(f"{where}: {name} is not a list of names")


def _is_new_in_qvit(key: str) -> bool:
    return any(t in key for t in (".a_quant.", ".w_quant.", "_act.", ".norm_q.", ".norm_k."))


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # safetensors writes 0600; checkpoints are ordinary files
    os.replace(tmp, path)


def save_json(path: Path, obj) -> None:
    _atomic_write(Path(path), lambda t: t.write_text(json.dumps(obj, indent=1, sort_keys=True)))


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _discard(d: Path) -> None:
    """Remove a checkpoint directory: first renamed to NAME.trash (atomic: a half-deleted
    directory never carries a name readers look at), then deleted."""
    trash = d.with_name(_base(d).name + TRASH)
    if trash.exists():  # left by a kill in the middle of a previous delete
        shutil.rmtree(trash)
    if not d.exists():
        return
    os.replace(d, trash)
    shutil.rmtree(trash)


def _base(d: Path) -> Path:
    """NAME for NAME, NAME.new, NAME.old, NAME.writing, NAME.trash."""
    for suffix in (NEW, OLD, WRITING, TRASH):
        if d.name.endswith(suffix):
            return d.with_name(d.name[: -len(suffix)])
    return d


def _settle(final: Path) -> None:
    """Finish an interrupted swap: afterwards `final` holds the newest complete checkpoint and no
    NAME.new / NAME.old is left. Every step keeps a complete checkpoint under a readable name."""
    new, old = final.with_name(final.name + NEW), final.with_name(final.name + OLD)
    if new.exists():
        if final.exists():
            _discard(old)  # final is complete and newer than old
            os.replace(final, old)
        os.replace(new, final)
        _fsync_dir(final.parent)
    if final.exists():
        _discard(old)


def save_checkpoint(
    directory: str | os.PathLike,
    model: nn.Module,
    config: dict,
    train_tensors: dict[str, torch.Tensor] | None = None,
    train_json: dict | None = None,
) -> None:
    """Write a checkpoint directory so that a kill at any moment, any number of times in a row,
    leaves a complete checkpoint (this one or the previous) under a name readers find:

        settle an interrupted swap -> build NAME.writing -> rename it NAME.new (complete: the one
        atomic step that publishes it) -> NAME -> NAME.old, NAME.new -> NAME -> drop NAME.old

    Readers (checkpoint_dir, has_run) take the first of NAME.new, NAME, NAME.old that exists:
    the newest complete one. NAME.writing is never read; directories are dropped by renaming
    them to NAME.trash first."""
    final = Path(directory)
    final.parent.mkdir(parents=True, exist_ok=True)
    _settle(final)
    tmp = final.with_name(final.name + WRITING)
    _discard(tmp)
    tmp.mkdir()
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic_write(tmp / MODEL_FILE, lambda t: save_file(sd, str(t)))
    save_json(tmp / CONFIG_FILE, config)
    if train_tensors is not None:
        tt = {k: v.detach().cpu().contiguous() for k, v in train_tensors.items()}
        _atomic_write(tmp / STATE_FILE, lambda t: save_file(tt, str(t)))
        save_json(tmp / STATE_JSON, train_json or {})
    _fsync_dir(tmp)
    os.replace(tmp, final.with_name(final.name + NEW))
    _fsync_dir(final.parent)
    _settle(final)


def _candidates(path: Path) -> list[Path]:
    """Where checkpoint NAME may be, newest first (see save_checkpoint)."""
    return [path.with_name(path.name + NEW), path, path.with_name(path.name + OLD)]


def has_run(out: str | os.PathLike) -> bool:
    """A `qvit train --out` folder holds a run to continue: `last` under any of the names an
    interrupted save_checkpoint leaves (`last.new`, `last`, `last.old`)."""
    return any(d.exists() for d in _candidates(Path(out) / "last"))


def checkpoint_dir(path: str | os.PathLike) -> Path:
    """The checkpoint directory to read: the newest complete one of PATH.new, PATH, PATH.old
    (PATH.new and PATH.old only exist while a swap was interrupted)."""
    for d in _candidates(Path(path)):
        if (d / CONFIG_FILE).exists():
            return d
    raise UserError(f"no checkpoint at {path} (expected {CONFIG_FILE} and {MODEL_FILE})")


def read_config(path: str | os.PathLike) -> dict:
    d = checkpoint_dir(path)
    try:
        config = json.loads((d / CONFIG_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {d / CONFIG_FILE}: {e}") from None
    validate_config(config, d / CONFIG_FILE)
    return config


def load_model(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Rebuild the model a checkpoint describes and load its weights."""
    from qvit.models import ModelConfig, build

    d = checkpoint_dir(path)
    config = read_config(d)
    try:
        model = build(ModelConfig.from_json(config["model"]))
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{d / CONFIG_FILE} does not describe a model: {e}") from None
    sd = read_state_dict(d / MODEL_FILE)
    check_tensors(sd, d / MODEL_FILE, model.state_dict())
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise UserError(f"{d / MODEL_FILE} does not fit its config: {str(e).splitlines()[0]}") from None
    set_pretrained_cfg(model, config)
    return model, config


def set_pretrained_cfg(model: nn.Module, config: dict) -> None:
    """The input the checkpoint was trained on (its `data`: channels, size, mean, std,
    interpolation, crop_pct) as the model's timm pretrained_cfg, so that
    `timm.data.resolve_data_config(model=m)` prepares images as training did."""
    data = config.get("data") or {}
    pe = getattr(model, "patch_embed", None)
    if pe is None or not data.get("mean") or not data.get("std"):
        return
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    size = pe.img_size if isinstance(pe.img_size, (tuple, list)) else (pe.img_size, pe.img_size)
    cfg.update(input_size=(pe.proj.in_channels, *(int(s) for s in size)), mean=tuple(data["mean"]),
               std=tuple(data["std"]), num_classes=getattr(model, "num_classes", cfg.get("num_classes")))
    for key in ("interpolation", "crop_pct"):
        if data.get(key) is not None:
            cfg[key] = data[key]
    model.pretrained_cfg = model.default_cfg = cfg
