"""Image file -> the normalised float32 tensor a model.so takes, as its metadata says.

The steps are timm's evaluation transform (what the model was trained and evaluated with),
done with Pillow and numpy only:

    decode -> channels -> resize the shorter side to size / crop_pct -> centre crop to size
           -> / 255 -> (x - mean) / std -> float32 [C, H, W]

Resize and crop follow torchvision's `Resize(int)` + `CenterCrop` on a PIL image exactly (the
same Pillow resampling, the same rounding of the crop offset), so the device sees the pixels
the training side saw.

Decoding accepts anything Pillow reads (JPEG, PNG, WebP, BMP, GIF, TIFF, ...) in any mode:
  * EXIF orientation is applied first, so a phone photo is upright as a viewer shows it.
  * transparency (RGBA, LA, palette with a transparent index) is composited over black, i.e.
    the colour is weighted by alpha; a fully transparent pixel is 0, never a hidden colour.
  * grayscale -> RGB repeats the channel; RGB -> grayscale is ITU-R 601-2 luma (Pillow's "L",
    the same as torchvision's Grayscale); CMYK, YCbCr, LAB, HSV go through Pillow's RGB.
  * 16-bit and 32-bit grayscale ("I;16", "I") are scaled from their full range (0..65535)
    rather than clipped at 255; float images ("F") are taken as values in 0..1.
Errors (missing, empty, not an image, truncated, decompression bomb) raise ImageError:
one line naming the file.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from qvit_edge.clikit import UserError

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
# Modes holding one channel of more than 8 bits; they are resized as float ("F") so no
# precision is lost, then scaled to 0..1.
_WIDE_GRAY_SCALE = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0,
                    "I": 65535.0, "F": 1.0}


class ImageError(UserError):
    """An image file that cannot be used, with the reason on one line."""


@dataclass(frozen=True)
class InputSpec:
    """What a model takes: the `input` block of its metadata (docs/integer-model.md)."""

    channels: int
    size: tuple[int, int]  # (height, width)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    crop_pct: float = 1.0

    @classmethod
    def from_meta(cls, meta: dict) -> InputSpec:
        """Validates the `input` block of a model's metadata (a bad one is a UserError)."""
        inp = meta.get("input") if isinstance(meta, dict) else None
        if not isinstance(inp, dict):
            raise UserError("model metadata has no 'input' block")
        try:
            size = inp["size"]
            size = (int(size), int(size)) if isinstance(size, (int, float)) else tuple(int(s) for s in size)
            spec = cls(channels=int(inp["channels"]), size=size,
                       mean=tuple(float(m) for m in inp["mean"]), std=tuple(float(s) for s in inp["std"]),
                       interpolation=str(inp.get("interpolation", "bicubic")),
                       crop_pct=float(inp.get("crop_pct", 1.0)))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"model metadata 'input' block is malformed ({type(e).__name__}: {e})") from None
        if spec.channels not in (1, 3):
            raise UserError(f"model wants {spec.channels} input channels; images give 1 (gray) or 3 (RGB)")
        if len(spec.size) != 2 or min(spec.size) < 1:
            raise UserError(f"model metadata input size {inp['size']!r} is not [height, width]")
        if len(spec.mean) != spec.channels or len(spec.std) != spec.channels or min(spec.std) <= 0:
            raise UserError("model metadata mean/std do not match its channels")
        if spec.interpolation not in _RESAMPLE:
            raise UserError(f"model metadata asks for interpolation {spec.interpolation!r}; "
                            f"known: {', '.join(_RESAMPLE)}")
        if not 0 < spec.crop_pct <= 4:
            raise UserError(f"model metadata crop_pct {spec.crop_pct} is out of range (0, 4]")
        return spec

    @property
    def scale_size(self) -> tuple[int, int]:
        """The size before the centre crop (timm: floor(size / crop_pct) per side)."""
        return tuple(math.floor(s / self.crop_pct) for s in self.size)


def open_image(path: str) -> Image.Image:
    """Decodes an image file completely (so a truncated file fails here, not later)."""
    shown = os.fspath(path)
    try:
        if os.path.isdir(path):
            raise ImageError(f"{shown}: is a directory, not an image")
        if os.path.getsize(path) == 0:
            raise ImageError(f"{shown}: empty file")
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS and refuses at twice that; on a small board
            # the warning level is already too big to decode, so both are refused.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                img = ImageOps.exif_transpose(img)
                img.load()
                return img
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{shown}: no such file") from None
    except PermissionError:
        raise ImageError(f"{shown}: permission denied") from None
    except UnidentifiedImageError:
        raise ImageError(f"{shown}: not an image Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{shown}: image too large (more than {Image.MAX_IMAGE_PIXELS} pixels, "
                         "Pillow's decompression-bomb limit)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # Pillow reports truncated and corrupt data this way ("image file is truncated ...").
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageError(f"{shown}: cannot decode image ({reason})") from None


def _to_channels(img: Image.Image, channels: int) -> Image.Image:
    """Any Pillow mode -> "L" or "RGB" (8 bit) or "F" (wide grayscale, scaled to 0..255)."""
    mode = img.mode
    if mode in _WIDE_GRAY_SCALE:
        a = np.asarray(img, dtype=np.float64) * (255.0 / _WIDE_GRAY_SCALE[mode])
        return Image.fromarray(np.clip(a, 0, 255).astype(np.float32), mode="F")
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")  # Pillow un-premultiplies RGBa / La here
        a = np.asarray(rgba, dtype=np.float32)
        rgb = a[..., :3] * (a[..., 3:] / 255.0)  # over black
        img, mode = Image.fromarray(np.rint(rgb).astype(np.uint8), mode="RGB"), "RGB"
    target = "L" if channels == 1 else "RGB"
    if mode == target:
        return img
    if channels == 3 and mode in ("1", "L"):
        return img.convert("L").convert("RGB")
    if channels == 1 and mode not in ("1", "L"):
        img = img.convert("RGB")
    return img.convert(target)


def _resize_shorter(img: Image.Image, size: int, resample) -> Image.Image:
    """torchvision Resize(int) on a PIL image: shorter side -> size, aspect kept."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return img
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return img.resize((new_w, new_h), resample)


def _resize_keep_ratio(img: Image.Image, size: tuple[int, int], resample) -> Image.Image:
    """timm ResizeKeepRatio (non-square target, longest=0): the image covers the target."""
    w, h = img.size
    ratio = min(h / size[0], w / size[1])
    return img.resize((round(w / ratio), round(h / ratio)), resample)


def _center_crop(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """torchvision CenterCrop on [H, W(, C)]: zero-pads first when the image is smaller."""
    th, tw = size
    h, w = a.shape[:2]
    if h < th or w < tw:
        ph, pw = max(th - h, 0), max(tw - w, 0)
        pad = [(ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)] + [(0, 0)] * (a.ndim - 2)
        a = np.pad(a, pad)
        h, w = a.shape[:2]
    top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
    return a[top:top + th, left:left + tw]


def preprocess(img: Image.Image, spec: InputSpec) -> np.ndarray:
    """A decoded image -> float32 [C, H, W], normalised, ready for Model.run (after a batch axis)."""
    img = _to_channels(img, spec.channels)
    resample = _RESAMPLE[spec.interpolation]
    scale = spec.scale_size
    if scale[0] == scale[1]:
        img = _resize_shorter(img, scale[0], resample)
    else:
        img = _resize_keep_ratio(img, scale, resample)
    a = _center_crop(np.asarray(img, dtype=np.float32), spec.size) / np.float32(255.0)
    if a.ndim == 2:
        a = np.repeat(a[None], spec.channels, axis=0)  # "F" gray for a 3-channel model
    else:
        a = a.transpose(2, 0, 1)
    mean = np.asarray(spec.mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(-1, 1, 1)
    return np.ascontiguousarray((a - mean) / std, dtype=np.float32)


def load_image(path: str, spec: InputSpec) -> np.ndarray:
    """One image file -> float32 [C, H, W] for the model described by spec."""
    img = open_image(path)
    try:
        return preprocess(img, spec)
    except (ValueError, OSError) as e:  # e.g. a mode Pillow cannot convert to RGB
        raise ImageError(f"{os.fspath(path)}: cannot convert {img.mode} image ({e})") from None


def load_batch(paths: list[str], spec: InputSpec) -> np.ndarray:
    """Image files -> float32 [B, C, H, W]."""
    return np.stack([load_image(p, spec) for p in paths])
