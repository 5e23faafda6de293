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
Errors (missing, empty, not a regular file, not an image, truncated, decompression bomb, too
elongated to resize) raise ImageError: one line naming the file.

Memory is bounded by the input, not by the file: decoding by Pillow's decompression-bomb limit,
the float conversions work a block of rows at a time, and the resized image may hold at most
MAX_RESIZE_FACTOR times the pixels of the model's input (an extreme aspect ratio, such as a
321-byte 1x2,000,000 PNG, would otherwise ask the resize for gigabytes).
"""
from __future__ import annotations

import math
import os
import stat
import warnings
from dataclasses import dataclass
from struct import error as struct_error

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
# The resized image (before the centre crop) may have at most this many times the pixels of the
# model's input. The shorter side goes to the input size, so this is an aspect-ratio limit: 64
# lets a 64:1 strip through a square model (panoramas are about 10:1), and keeps the resize of
# a 256 px model under 13 MB of RGB. Beyond it there is nothing left to see after the crop.
MAX_RESIZE_FACTOR = 64
# Float temporaries of the mode conversions are made this many bytes at a time.
_BLOCK_BYTES = 1 << 24


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
        if min(spec.scale_size) < 1:
            raise UserError(f"model metadata crop_pct {spec.crop_pct} leaves no pixels of a "
                            f"{inp['size']!r} input")
        return spec

    @property
    def scale_size(self) -> tuple[int, int]:
        """The size before the centre crop (timm: floor(size / crop_pct) per side)."""
        return tuple(math.floor(s / self.crop_pct) for s in self.size)


_FILE_KINDS = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _not_regular(shown: str, mode: int) -> ImageError:
    if stat.S_ISDIR(mode):
        return ImageError(f"{shown}: is a directory, not an image")
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a file")
    return ImageError(f"{shown}: not a regular file ({kind})")


def _open_regular(path: str, shown: str):
    """A binary file object for path, which must be a regular file. Checked before opening (a FIFO
    would block, /dev/urandom never ends, opening some devices has effects) and again on the open
    descriptor (the name may have been swapped in between); O_NONBLOCK so the open never waits."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(shown, st.st_mode)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, NotADirectoryError):
        raise ImageError(f"{shown}: no such file") from None
    except PermissionError:
        raise ImageError(f"{shown}: permission denied") from None
    except OSError as e:  # a name too long, a symlink loop, ...
        raise ImageError(f"{shown}: cannot open ({e.strerror or e})") from None
    f = os.fdopen(fd, "rb")
    try:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(shown, st.st_mode)
        if st.st_size == 0:
            raise ImageError(f"{shown}: empty file")
    except BaseException:
        f.close()
        raise
    return f


def open_image(path: str, spec: InputSpec | None = None) -> Image.Image:
    """Decodes an image file completely (so a truncated file fails here, not later). With the
    model's spec, an image too elongated to resize is refused from its header, before decoding
    (Pillow's memory for a 1 x 10^7 image is mostly per row)."""
    shown = os.fspath(path)
    try:
        with _open_regular(path, shown) as f, warnings.catch_warnings():
            # Pillow's other warnings (damaged TIFF / EXIF metadata it skips) would be extra
            # stderr lines around the one line a result or an error is.
            warnings.simplefilter("ignore")
            # Pillow warns above MAX_IMAGE_PIXELS and refuses at twice that; on a small board
            # the warning level is already too big to decode, so both are refused.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(f) as img:
                if spec is not None:
                    w, h = img.size
                    try:  # the EXIF orientation may still swap the sides: refuse only if both fail
                        check_resize(h, w, spec, shown)
                    except ImageError:
                        check_resize(w, h, spec, shown)
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
    except MemoryError:
        raise ImageError(f"{shown}: not enough memory to decode this image") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct_error, IndexError, TypeError) as e:
        # Pillow reports truncated and corrupt data this way ("image file is truncated ...");
        # some damaged headers surface as struct.error / IndexError / TypeError from its parsers.
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageError(f"{shown}: cannot decode image ({reason})") from None


def _row_blocks(h: int, row_bytes: int):
    """Row slices whose float temporaries stay near _BLOCK_BYTES (the results are elementwise,
    so working by blocks gives exactly the values of one whole-array expression)."""
    step = max(1, _BLOCK_BYTES // max(row_bytes, 1))
    for top in range(0, h, step):
        yield slice(top, min(top + step, h))


def _to_channels(img: Image.Image, channels: int) -> Image.Image:
    """Any Pillow mode -> "L" or "RGB" (8 bit) or "F" (wide grayscale, scaled to 0..255)."""
    mode = img.mode
    if mode in _WIDE_GRAY_SCALE:
        src = np.asarray(img)
        out = np.empty(src.shape, np.float32)
        for rows in _row_blocks(src.shape[0], src.shape[1] * 8):
            a = src[rows].astype(np.float64) * (255.0 / _WIDE_GRAY_SCALE[mode])
            if mode == "F" and np.isnan(a).any():  # a float TIFF can hold NaN: no pixel value
                raise ValueError("NaN pixel values")
            out[rows] = np.clip(a, 0, 255)
        return Image.fromarray(out, mode="F")
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Pillow un-premultiplies RGBa / La here (an RGBA image is used as it is: no copy)
        rgba = np.asarray(img if mode == "RGBA" else img.convert("RGBA"))
        out = np.empty(rgba.shape[:2] + (3,), np.uint8)
        for rows in _row_blocks(rgba.shape[0], rgba.shape[1] * 4 * 4 * 3):
            a = rgba[rows].astype(np.float32)
            out[rows] = np.rint(a[..., :3] * (a[..., 3:] / 255.0))  # over black
        img, mode = Image.fromarray(out, mode="RGB"), "RGB"
    target = "L" if channels == 1 else "RGB"
    if mode == target:
        return img
    if channels == 3 and mode in ("1", "L"):
        return img.convert("L").convert("RGB")
    if channels == 1 and mode not in ("1", "L"):
        img = img.convert("RGB")
    return img.convert(target)


def _shorter_side_size(w: int, h: int, size: int) -> tuple[int, int]:
    """torchvision Resize(int) on a PIL image: shorter side -> size, aspect kept."""
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return w, h
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if w <= h else (new_long, new_short)


def _keep_ratio_size(w: int, h: int, size: tuple[int, int]) -> tuple[int, int]:
    """timm ResizeKeepRatio (non-square target, longest=0): the image covers the target."""
    ratio = min(h / size[0], w / size[1])
    return round(w / ratio), round(h / ratio)


def resize_size(w: int, h: int, spec: InputSpec) -> tuple[int, int]:
    """(width, height) an image of w x h is resized to before the centre crop."""
    scale = spec.scale_size
    if scale[0] == scale[1]:
        return _shorter_side_size(w, h, scale[0])
    return _keep_ratio_size(w, h, scale)


def max_resize_pixels(spec: InputSpec) -> int:
    """The most pixels preprocessing lets the resize make for this model (MAX_RESIZE_FACTOR)."""
    (sh, sw), (h, w) = spec.scale_size, spec.size
    return MAX_RESIZE_FACTOR * max(sh * sw, h * w)


def check_resize(w: int, h: int, spec: InputSpec, shown: str) -> tuple[int, int]:
    """-> the resize size, or ImageError when it is over max_resize_pixels (checked before any
    work: what the resize allocates grows with it, not with the file)."""
    nw, nh = resize_size(w, h, spec)
    if nw * nh > max_resize_pixels(spec):
        raise ImageError(
            f"{shown}: image {w}x{h} is too elongated for the model's {spec.size[1]}x{spec.size[0]} input "
            f"(resizing it would make {nw}x{nh} pixels; at most {MAX_RESIZE_FACTOR} times the input's)")
    return nw, nh


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


def preprocess(img: Image.Image, spec: InputSpec, shown: str = "image") -> np.ndarray:
    """A decoded image -> float32 [C, H, W], normalised, ready for Model.run (after a batch axis).
    An image too elongated to resize within max_resize_pixels is an ImageError naming `shown`."""
    new_size = check_resize(*img.size, spec, shown)
    img = _to_channels(img, spec.channels)
    if new_size != img.size:
        img = img.resize(new_size, _RESAMPLE[spec.interpolation])
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
    img = open_image(path, spec)
    shown = os.fspath(path)
    try:
        return preprocess(img, spec, shown)
    except ImageError:
        raise
    except MemoryError:
        raise ImageError(f"{shown}: not enough memory to prepare this image") from None
    except (ValueError, OSError) as e:  # e.g. a mode Pillow cannot convert to RGB
        raise ImageError(f"{shown}: cannot convert {img.mode} image ({e})") from None


def load_batch(paths: list[str], spec: InputSpec) -> np.ndarray:
    """Image files -> float32 [B, C, H, W]."""
    return np.stack([load_image(p, spec) for p in paths])
