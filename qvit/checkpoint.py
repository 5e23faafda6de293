"""Checkpoints: safetensors tensors + a JSON config, written atomically; never pickle.

A checkpoint is a directory:
    model.safetensors   the model's state dict (float32 weights, quantizer steps/offsets)
    config.json         model config (arch, bits, IRM, timm kwargs), data (image size,
                        normalisation, class names) and training progress
    train_state.safetensors + train_state.json   (training runs only) optimizer and scheduler
                        state, epoch/step, RNG states: what `qvit train --resume` needs
Every file is written to a temporary name and renamed, and the directory is swapped in with a
rename, so a run killed at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from qvit_edge.clikit import UserError

MODEL_FILE, CONFIG_FILE = "model.safetensors", "config.json"
STATE_FILE, STATE_JSON = "train_state.safetensors", "train_state.json"


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


def save_checkpoint(
    directory: str | os.PathLike,
    model: nn.Module,
    config: dict,
    train_tensors: dict[str, torch.Tensor] | None = None,
    train_json: dict | None = None,
) -> None:
    """Write a checkpoint directory atomically (build it beside, then swap it in)."""
    final = Path(directory)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".writing")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic_write(tmp / MODEL_FILE, lambda t: save_file(sd, str(t)))
    save_json(tmp / CONFIG_FILE, config)
    if train_tensors is not None:
        tt = {k: v.detach().cpu().contiguous() for k, v in train_tensors.items()}
        _atomic_write(tmp / STATE_FILE, lambda t: save_file(tt, str(t)))
        save_json(tmp / STATE_JSON, train_json or {})
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def has_run(out: str | os.PathLike) -> bool:
    """A `qvit train --out` folder holds a run to continue: `last/`, or the `last.old/` an
    interrupted swap in save_checkpoint leaves."""
    last = Path(out) / "last"
    return last.exists() or last.with_name("last.old").exists()


def checkpoint_dir(path: str | os.PathLike) -> Path:
    """The checkpoint directory to read, falling back to `.old` if a swap was interrupted."""
    p = Path(path)
    if (p / CONFIG_FILE).exists():
        return p
    old = p.with_name(p.name + ".old")
    if (old / CONFIG_FILE).exists():
        return old
    raise UserError(f"no checkpoint at {path} (expected {CONFIG_FILE} and {MODEL_FILE})")


def read_config(path: str | os.PathLike) -> dict:
    d = checkpoint_dir(path)
    try:
        return json.loads((d / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {d / CONFIG_FILE}: {e}") from None


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
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise UserError(f"{d / MODEL_FILE} does not fit its config: {str(e).splitlines()[0]}") from None
    return model, config
