"""Image decoding and preprocessing (qvit_edge.preprocess): every image kind, timm parity, bad files."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from qvit_edge.clikit import UserError
from qvit_edge.preprocess import ImageError, InputSpec, load_batch, load_image

RGB_SPEC = InputSpec(channels=3, size=(24, 24), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                     interpolation="bicubic", crop_pct=0.875)
GRAY_SPEC = InputSpec(channels=1, size=(28, 28), mean=(0.286,), std=(0.353,), interpolation="bilinear",
                      crop_pct=1.0)


def _photo(w=53, h=37, seed=0):
    """A smooth random RGB picture (noise alone would make every resampler look alike)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.stack([128 + 100 * np.sin(xx / (3 + c) + yy / (5 - c)) for c in range(3)], -1)
    a += rng.normal(0, 10, a.shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")


def _save(tmp_path, img, name, **kw):
    p = tmp_path / name
    img.save(p, **kw)
    return str(p)


def _unnormalise(x, spec):
    std, mean = (np.asarray(v, np.float32)[:, None, None] for v in (spec.std, spec.mean))
    return x * std + mean


@pytest.mark.parametrize("interp,crop_pct,size,wh", [
    ("bicubic", 0.875, (24, 24), (53, 37)),
    ("bilinear", 1.0, (24, 24), (37, 53)),
    ("bicubic", 0.9, (16, 24), (50, 41)),   # non-square target: timm ResizeKeepRatio
    ("nearest", 1.0, (28, 28), (28, 28)),   # already the right size: no resize
    ("lanczos", 1.2, (20, 20), (20, 20)),   # crop_pct > 1: zero padding, as torchvision
])
def test_matches_timm_eval_transform(tmp_path, interp, crop_pct, size, wh):
    timm_data = pytest.importorskip("timm.data")
    spec = InputSpec(3, size, RGB_SPEC.mean, RGB_SPEC.std, interp, crop_pct)
    img = _photo(*wh)
    path = _save(tmp_path, img, "p.png")
    tf = timm_data.create_transform(input_size=(3, *size), interpolation=interp, crop_pct=crop_pct,
                                    mean=spec.mean, std=spec.std)
    want = tf(img.copy()).numpy()
    got = load_image(path, spec)
    assert got.dtype == np.float32 and got.shape == (3, *size)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_gray_model_uses_luma_and_keeps_28px_input_exact(tmp_path):
    a = np.random.default_rng(1).integers(0, 256, (28, 28), dtype=np.uint8)
    got = load_image(_save(tmp_path, Image.fromarray(a, "L"), "g.png"), GRAY_SPEC)
    np.testing.assert_allclose(got[0], (a / np.float32(255) - 0.286) / np.float32(0.353), atol=1e-6)
    rgb = _photo(28, 28)
    got = load_image(_save(tmp_path, rgb, "c.png"), GRAY_SPEC)
    luma = np.asarray(rgb.convert("L"), np.float32) / 255
    np.testing.assert_allclose(_unnormalise(got, GRAY_SPEC)[0], luma, atol=1e-6)


FORMATS = [("png", {}), ("jpeg", {"quality": 95}), ("webp", {"lossless": True}), ("bmp", {}),
           ("gif", {}), ("tiff", {})]


@pytest.mark.parametrize("fmt,kw", FORMATS)
@pytest.mark.parametrize("spec", [RGB_SPEC, GRAY_SPEC], ids=["rgb", "gray"])
def test_every_format_decodes_to_the_model_input(tmp_path, fmt, kw, spec):
    img = _photo()
    if fmt == "gif":
        img = img.convert("P")
    x = load_image(_save(tmp_path, img, f"i.{fmt}", **kw), spec)
    assert x.shape == (spec.channels, *spec.size) and x.dtype == np.float32
    ref = load_image(_save(tmp_path, _photo(), "ref.png"), spec)  # lossless original
    tol = {"jpeg": 0.08, "gif": 0.25}.get(fmt, 1e-6)  # in 0..1 pixel units
    assert np.abs(_unnormalise(x, spec) - _unnormalise(ref, spec)).mean() <= tol


def _solid(mode, value, size=(30, 20)):
    return Image.new(mode, size, value)


@pytest.mark.parametrize("mode,value,fmt,want_rgb", [
    ("L", 51, "png", (0.2, 0.2, 0.2)),
    ("1", 1, "bmp", (1.0, 1.0, 1.0)),
    ("RGB", (255, 0, 51), "png", (1.0, 0.0, 0.2)),
    ("RGBA", (255, 0, 51, 255), "png", (1.0, 0.0, 0.2)),      # opaque: colour kept
    ("RGBA", (255, 0, 51, 0), "png", (0.0, 0.0, 0.0)),        # transparent: black, not the hidden colour
    ("RGBA", (200, 100, 0, 51), "webp", (0.157, 0.078, 0.0)),  # alpha 0.2 over black
    ("LA", (255, 51), "png", (0.2, 0.2, 0.2)),
    ("CMYK", (0, 255, 255, 0), "jpeg", (1.0, 0.0, 0.0)),      # red in CMYK
    ("I;16", 65535, "png", (1.0, 1.0, 1.0)),                  # 16-bit: full range, not clipped at 255
    ("I;16", 13107, "png", (0.2, 0.2, 0.2)),
    ("I", 32768, "tiff", (0.5, 0.5, 0.5)),
    ("F", 0.25, "tiff", (0.25, 0.25, 0.25)),
    ("YCbCr", (76, 85, 255), "jpeg", (1.0, 0.0, 0.0)),        # YCbCr red
])
def test_every_mode_converts_to_rgb_and_gray(tmp_path, mode, value, fmt, want_rgb):
    path = _save(tmp_path, _solid(mode, value), f"s.{fmt}")
    want_rgb = np.asarray(want_rgb, np.float32)
    tol = 0.03 if fmt in ("jpeg", "webp") else 1e-5
    x = _unnormalise(load_image(path, RGB_SPEC), RGB_SPEC)
    assert np.abs(x - want_rgb[:, None, None]).max() <= tol
    g = _unnormalise(load_image(path, GRAY_SPEC), GRAY_SPEC)
    luma = np.dot([0.299, 0.587, 0.114], want_rgb)
    assert np.abs(g - luma).max() <= tol + 2 / 255


def test_palette_with_transparent_index_is_composited(tmp_path):
    img = Image.new("P", (10, 10), 1)
    img.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    img.paste(0, (0, 0, 5, 10))
    path = _save(tmp_path, img, "t.png", transparency=1)  # index 1 (white) is transparent
    x = load_image(path, InputSpec(3, (10, 10), (0, 0, 0), (1, 1, 1), "nearest", 1.0))  # mean 0, std 1
    assert np.abs(x).max() < 1e-6


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 255, 255))
    img.paste((0, 0, 0), (0, 0, 20, 20))  # left half black
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _save(tmp_path, img, "o.jpg", exif=exif, quality=95)
    spec = InputSpec(1, (40, 20), (0,), (1,), "nearest", 1.0)  # portrait after rotation: H=40, W=20
    x = load_image(path, spec)[0]
    assert x.shape == (40, 20)
    assert x[:18].mean() < 0.1 and x[22:].mean() > 0.9  # the black half is now on top


def test_batch_stacks_images(tmp_path):
    paths = [_save(tmp_path, _photo(seed=s), f"{s}.png") for s in range(3)]
    b = load_batch(paths, RGB_SPEC)
    assert b.shape == (3, 3, 24, 24)
    np.testing.assert_array_equal(b[1], load_image(paths[1], RGB_SPEC))


def _png_header_only(w, h):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _bad_files(tmp_path):
    good = io.BytesIO()
    _photo(200, 200).save(good, "JPEG", quality=90)
    png = io.BytesIO()
    _photo(200, 200).save(png, "PNG")
    files = {
        "empty": b"",
        "text": b"hello, I am not an image\n",
        "truncated_jpeg": good.getvalue()[: len(good.getvalue()) // 2],
        "truncated_png": png.getvalue()[: len(png.getvalue()) // 2],
        "bomb_error": _png_header_only(30000, 30000),   # 900 Mpx: over twice Pillow's limit
        "bomb_warning": _png_header_only(10000, 10000),  # 100 Mpx: over Pillow's limit
    }
    out = {}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        out[name] = str(tmp_path / name)
    out["missing"] = str(tmp_path / "nope.jpg")
    out["directory"] = str(tmp_path)
    return out


@pytest.mark.parametrize("kind,needle", [
    ("empty", "empty file"), ("text", "not an image"), ("truncated_jpeg", "cannot decode"),
    ("truncated_png", "cannot decode"), ("bomb_error", "too large"), ("bomb_warning", "too large"),
    ("missing", "no such file"), ("directory", "directory"),
])
def test_bad_image_files_give_one_line_errors(tmp_path, kind, needle):
    path = _bad_files(tmp_path)[kind]
    with pytest.raises(ImageError) as e:
        load_image(path, RGB_SPEC)
    msg = str(e.value)
    assert needle in msg and path in msg and "\n" not in msg
    assert isinstance(e.value, UserError)


def test_spec_from_meta_reads_and_validates():
    meta = {"input": {"channels": 1, "size": [28, 28], "mean": [0.286], "std": [0.353],
                      "interpolation": "bilinear", "crop_pct": 1.0}}
    assert InputSpec.from_meta(meta) == GRAY_SPEC
    assert InputSpec.from_meta({"input": {**meta["input"], "size": 28}}).size == (28, 28)
    bad = [{}, {"input": {**meta["input"], "channels": 2}}, {"input": {**meta["input"], "mean": [0, 0]}},
           {"input": {**meta["input"], "interpolation": "magic"}}, {"input": {**meta["input"], "std": [0]}},
           {"input": {**meta["input"], "size": [28]}}, {"input": {"channels": 1}}]
    for m in bad:
        with pytest.raises(UserError):
            InputSpec.from_meta(m)
