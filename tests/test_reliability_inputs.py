"""Hostile inputs end in one line and exit status 2, never a crash, a hang or a traceback.

* images: bounded memory for extreme aspect ratios, non-regular files, a seeded fuzz of mutated
  real Fashion-MNIST PNG / JPEG / ... files (in-process, and a handful through `qvit-edge run`);
* printing never fails on encoding (a non-ASCII image name under PYTHONIOENCODING=ascii);
* every command-line argument is range-checked while parsing, before any work starts;
* checkpoints and integer models with NaN / Inf, non-positive steps, wrong dtypes, wrong types
  (a bit width `true` or "two"), unknown format versions are refused, naming the field.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from contextlib import contextmanager

import numpy as np
import pytest
from conftest import one_line_error as _one_line
from PIL import Image

from qvit_compile import intmodel
from qvit_edge import preprocess as pp
from qvit_edge.preprocess import ImageError, InputSpec, load_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
GRAY = InputSpec(1, (28, 28), (0.286,), (0.353,), "bilinear", 1.0)
RGB = InputSpec(3, (24, 24), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic", 0.875)




def _png_with_size(w, h, data=b"\0" * 64):
    """A PNG whose header says w x h (8-bit gray) over a little pixel data."""

    def chunk(kind, payload):
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(data))
        + chunk(b"IEND", b"")
    )


# ----------------------------------------------------------------------------------------------
# memory: what the resize would allocate is bounded by the model's input, not by the file


def test_extreme_aspect_ratios_are_refused_from_the_header(tmp_path):
    for w, h in ((1, 300_000), (1, 2_000_000), (2_000_000, 1)):
        p = tmp_path / f"{w}x{h}.png"
        Image.new("L", (w, h)).save(p)
        assert p.stat().st_size < 5000  # a few hundred bytes ask for gigabytes
        with pytest.raises(ImageError) as e:
            load_image(str(p), GRAY)
        msg = str(e.value)
        assert "too elongated" in msg and str(p) in msg and "\n" not in msg


def test_the_limit_is_an_aspect_ratio_relative_to_the_model_input(tmp_path):
    # a square 28 px model: the shorter side goes to 28, the longer to at most 64 x 28
    assert pp.max_resize_pixels(GRAY) == pp.MAX_RESIZE_FACTOR * 28 * 28
    ok, bad = tmp_path / "ok.png", tmp_path / "bad.png"
    Image.new("L", (10, 10 * pp.MAX_RESIZE_FACTOR), 200).save(ok)
    Image.new("L", (10, 10 * pp.MAX_RESIZE_FACTOR + 10), 200).save(bad)
    x = load_image(str(ok), GRAY)
    assert x.shape == (1, 28, 28) and np.isfinite(x).all()
    with pytest.raises(ImageError, match="too elongated"):
        load_image(str(bad), GRAY)
    # a non-square 16x64 input: a 1024x16 strip fits, stored on its side (16x1024) it does not;
    # with the EXIF orientation that turns it upright it is judged upright
    wide = InputSpec(1, (16, 64), (0.5,), (0.25,), "bilinear", 1.0)
    assert pp.resize_size(1024, 16, wide) == (1024, 16) and pp.resize_size(16, 1024, wide) == (64, 4096)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to view
    side, flat = tmp_path / "side.jpg", tmp_path / "flat.jpg"
    Image.new("L", (16, 1024), 90).save(side, exif=exif)
    Image.new("L", (16, 1024), 90).save(flat)
    assert load_image(str(side), wide).shape == (1, 16, 64)
    with pytest.raises(ImageError, match="too elongated"):
        load_image(str(flat), wide)


def test_peak_memory_of_a_tiny_elongated_png_stays_small(tmp_path):
    """The 116-byte 1x300,000 PNG took 1.4 GB and the 1x2,000,000 one 5.8 GiB before."""
    paths = []
    for h in (300_000, 2_000_000):
        p = tmp_path / f"1x{h}.png"
        Image.new("L", (1, h)).save(p)
        paths.append(str(p))
    code = (
        "import sys\n"
        "from qvit_edge.preprocess import InputSpec, ImageError, load_image\n"
        "spec = InputSpec(1, (28, 28), (0.5,), (0.25,), 'bilinear', 1.0)\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n"
        "        load_image(p, spec)\n"
        "    except ImageError:\n"
        "        pass\n"
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the (large) forking pytest
        "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0]\n"
        "print(int(hwm.split()[1]) // 1024)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.strip()) < 400, f"peak RSS {r.stdout.strip()} MB"


@pytest.mark.parametrize("mode", ["RGBA", "LA", "I;16", "F"])
def test_conversion_by_blocks_equals_the_whole_array_formula(monkeypatch, mode):
    """The float conversions work a few rows at a time; the values are exactly those of one
    whole-array expression (the formulas preprocessing had before)."""
    rng = np.random.default_rng(3)
    if mode in ("RGBA", "LA"):
        img = Image.fromarray(rng.integers(0, 256, (37, 29, 4), dtype=np.uint8), "RGBA").convert(mode)
        a = np.asarray(img.convert("RGBA"), dtype=np.float32)
        want = np.rint(a[..., :3] * (a[..., 3:] / 255.0)).astype(np.uint8)
    elif mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (37, 29), dtype=np.uint16))
        want = np.clip(np.asarray(img, dtype=np.float64) * (255.0 / 65535.0), 0, 255).astype(np.float32)
    else:
        img = Image.fromarray(rng.uniform(-0.5, 1.5, (37, 29)).astype(np.float32), "F")
        want = np.clip(np.asarray(img, dtype=np.float64) * 255.0, 0, 255).astype(np.float32)
    monkeypatch.setattr(pp, "_BLOCK_BYTES", 64)  # a block of one row or two
    got = np.asarray(pp._to_channels(img, 3))  # RGB for alpha modes, "F" for wide gray
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------------------------
# not a regular file: refused before opening (a FIFO would block, /dev/urandom never ends)


def _load_in_child(path, timeout=120):
    code = (
        "import sys\n"
        "from qvit_edge.preprocess import InputSpec, ImageError, load_image\n"
        "spec = InputSpec(1, (28, 28), (0.5,), (0.25,), 'bilinear', 1.0)\n"
        "try:\n"
        "    load_image(sys.argv[1], spec)\n"
        "except ImageError as e:\n"
        "    print(e, file=sys.stderr)\n"
        "    sys.exit(2)\n"
    )
    return subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=timeout)


def test_fifo_devices_and_directories_are_not_images(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    link = tmp_path / "zero.png"
    link.symlink_to("/dev/zero")
    cases = [
        (str(fifo), "not a regular file (a named pipe)"),
        ("/dev/urandom", "not a regular file"),
        ("/dev/null", "not a regular file"),
        (str(link), "not a regular file (a character device)"),
        (str(tmp_path), "is a directory"),
    ]
    for path, needle in cases:
        _one_line(_load_in_child(path), path, needle)  # the FIFO one would block without the check


# ----------------------------------------------------------------------------------------------
# a seeded fuzz over real images: success or one ImageError line, nothing else


def _fmnist(n):
    if not os.path.exists(FMNIST):
        pytest.skip(f"{FMNIST} missing (Debian package dataset-fashion-mnist)")
    with gzip.open(FMNIST) as f:
        return np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n]


def _encodings(raw):
    """Real Fashion-MNIST images in several formats and modes, as bytes."""
    out = []
    for i, a in enumerate(raw):
        gray = Image.fromarray(a, "L")
        rgb = gray.convert("RGB")
        for img, fmt, kw in (
            (gray, "PNG", {}),
            (rgb, "JPEG", {"quality": 90}),
            (Image.fromarray(a.astype(np.uint16) * 257), "PNG", {}),
            (gray.convert("P"), "GIF", {}),
            (gray, "BMP", {}),
            (gray, "TIFF", {}),
            (rgb, "WEBP", {"quality": 80}),
            (rgb.convert("RGBA"), "PNG", {}),
        ):
            b = io.BytesIO()
            img.save(b, fmt, **kw)
            out.append((f"{i}.{fmt.lower()}", b.getvalue()))
    return out


def _png_set_size(data, w, h, fix_crc):
    data = bytearray(data)
    if data[12:16] != b"IHDR":
        return bytes(data)
    data[16:24] = struct.pack(">II", w, h)
    if fix_crc:
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _jpeg_set_size(data, w, h):
    data = bytearray(data)
    i = data.find(b"\xff\xc0")
    if i > 0:
        data[i + 5 : i + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def _mutations(rng, bases):
    """~150 seeded mutations: byte flips, truncations, header edits, extreme dimensions."""
    extreme = [0, 1, 2, 7, 65535, 2**16 + 1, 2**24, 2**31 - 1, 2**32 - 1]
    cases = []
    for k in range(130):
        name, data = bases[int(rng.integers(len(bases)))]
        kind = ("flip", "truncate", "header", "splice", "zero")[k % 5]
        b = bytearray(data)
        if kind == "flip":
            for _ in range(int(rng.integers(1, 9))):
                pos = int(rng.integers(len(b)))
                b[pos] ^= 1 << int(rng.integers(8))
        elif kind == "truncate":
            b = b[: int(rng.integers(1, len(b)))]
        elif kind == "header":
            w, h = (extreme[int(rng.integers(len(extreme)))] for _ in range(2))
            if name.endswith(".png"):
                b = bytearray(_png_set_size(bytes(b), w, h, fix_crc=bool(rng.integers(2))))
            elif name.endswith(".jpeg"):
                b = bytearray(_jpeg_set_size(bytes(b), min(w, 65535), min(h, 65535)))
            else:  # any format: random bytes over the first 32
                n = min(32, len(b))
                b[:n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        elif kind == "splice":
            pos = int(rng.integers(len(b)))
            b[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 200)), dtype=np.uint8).tobytes()
        else:
            pos = int(rng.integers(len(b)))
            b[pos : pos + int(rng.integers(1, 100))] = b"\0" * 100
        cases.append((f"{kind}{k}_{name}", bytes(b)))
    # extreme dimensions that decode: strips, single pixels, headers over little data
    for w, h in ((1, 1), (1, 1800), (1800, 1), (3, 5000), (1, 100_000), (100_000, 2)):
        b = io.BytesIO()
        Image.new("L", (w, h), 128).save(b, "PNG")
        cases.append((f"dims{w}x{h}.png", b.getvalue()))
    for w, h in ((30000, 30000), (10000, 10000), (1, 2**31 - 1), (50000, 3)):
        cases.append((f"hdr{w}x{h}.png", _png_with_size(w, h)))
    cases += [("empty.png", b""), ("text.jpg", b"not an image\n"), ("magic.png", b"\x89PNG\r\n\x1a\n")]
    return cases


@contextmanager
def _hang_guard(seconds, what):
    """Turn a hang into a failure (SIGALRM), so the fuzz cannot block the suite."""

    def fire(signum, frame):
        raise AssertionError(f"{what}: still running after {seconds} s (a hang?)")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def fuzz_cases(tmp_path_factory):
    rng = np.random.default_rng(20240611)
    d = tmp_path_factory.mktemp("fuzz")
    out = []
    for name, data in _mutations(rng, _encodings(_fmnist(4))):
        p = d / name
        p.write_bytes(data)
        out.append(str(p))
    return out


def test_fuzzed_images_decode_or_fail_with_one_line(fuzz_cases):
    assert len(fuzz_cases) >= 140
    outcomes = {"ok": 0, "error": 0}
    for path in fuzz_cases:
        for spec in (GRAY, RGB):
            with _hang_guard(60, path):
                try:
                    x = load_image(path, spec)
                except ImageError as e:  # anything else is a bug (the test fails with it)
                    msg = str(e)
                    assert "\n" not in msg and path in msg, msg
                    outcomes["error"] += 1
                    continue
            assert x.dtype == np.float32 and x.shape == (spec.channels, *spec.size), path
            assert np.isfinite(x).all(), path
            outcomes["ok"] += 1
    # the mutations are neither all harmless nor all fatal
    assert outcomes["ok"] > 20 and outcomes["error"] > 20, outcomes


@pytest.fixture(scope="module")
def tiny_model_so(tmp_path_factory):
    from qvit_compile.compiler import compile_model

    path = str(tmp_path_factory.mktemp("model") / "deit.so")
    compile_model(intmodel.random_deit(seed=0), "x86_64", path, progress=lambda *a: None)
    return path


def _edge(*args, env=None, timeout=180):
    return subprocess.run(
        [sys.executable, "-m", "qvit_edge", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def test_a_handful_of_fuzzed_images_through_the_command_line(tiny_model_so, fuzz_cases):
    rng = np.random.default_rng(7)
    picks = [fuzz_cases[i] for i in rng.choice(len(fuzz_cases), 6, replace=False)]
    picks += [p for p in fuzz_cases if os.path.basename(p).startswith(("dims1x100000", "hdr30000"))]
    picks += [p for p in fuzz_cases if p.endswith(".tiff")]  # damaged metadata: Pillow warns
    for path in picks:
        r = _edge("run", tiny_model_so, path)
        assert r.returncode in (0, 2), (path, r.returncode, r.stderr[-2000:])  # never a signal
        assert "Traceback" not in r.stderr, r.stderr
        if r.returncode == 0:
            assert r.stdout.startswith(path) and not r.stderr.strip(), (r.stdout, r.stderr)
        else:
            _one_line(r, path)


# ----------------------------------------------------------------------------------------------
# output encoding


def test_a_non_ascii_image_name_prints_under_an_ascii_encoding(tiny_model_so, tmp_path):
    img = tmp_path / "chemis\u00e9.png"
    Image.fromarray(_fmnist(1)[0], "L").save(img)
    env = dict(os.environ, PYTHONIOENCODING="ascii")
    r = _edge("run", tiny_model_so, str(img), env=env)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "chemis\\xe9.png" in r.stdout
    r = _edge("run", tiny_model_so, str(tmp_path / "manqu\u00e9.png"), env=env)
    _one_line(r, "no such file")
    # undecodable bytes in a file name (surrogates in Python's argv) under UTF-8
    raw = os.path.join(os.fsencode(tmp_path), b"bad\xff.png")
    with open(raw, "wb") as f:
        f.write(img.read_bytes())
    r = subprocess.run(
        [sys.executable, "-m", "qvit_edge", "run", tiny_model_so, raw],
        capture_output=True,
        cwd=ROOT,
        timeout=180,
        env=dict(os.environ, PYTHONIOENCODING="utf-8"),
    )
    assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr


# ----------------------------------------------------------------------------------------------
# command lines: every argument range-checked while parsing


def _qvit(monkeypatch, capsys, *argv):
    from qvit.cli import main

    monkeypatch.setattr(sys, "argv", ["qvit", *argv])
    rc = main(list(argv))
    return rc, capsys.readouterr().err


def _edge_main(monkeypatch, capsys, *argv):
    from qvit_edge.cli import main

    monkeypatch.setattr(sys, "argv", ["qvit-edge", *argv])
    rc = main(list(argv))
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["train", "--threads", "-1"], "--threads"),
        (["train", "--threads", "0"], "--threads"),
        (["train", "--limit-train", "0"], "--limit-train"),
        (["train", "--limit-train", "-5"], "--limit-train"),
        (["train", "--limit-val", "0"], "--limit-val"),
        (["train", "--eval-every", "0"], "--eval-every"),
        (["train", "--max-steps", "-1"], "--max-steps"),
        (["train", "--save-every", "-1"], "--save-every"),
        (["train", "--epochs", "0"], "--epochs"),
        (["train", "--batch-size", "0"], "--batch-size"),
        (["train", "--lr", "nan"], "--lr"),
        (["train", "--lr", "-1"], "--lr"),
        (["train", "--alpha", "2"], "--alpha"),
        (["train", "--bits", "0"], "--bits"),
        (["train", "--seed", "-1"], "--seed"),
        (["train", "--workers", "-1"], "--workers"),
        (["train", "--img-size", "-28"], "--img-size"),
        (["train", "--out", ""], "--out"),
        (["train", "--out", "/proc/qvit-run"], "--out"),
        (["train", "--model-arg", "img_size=-28", "--out", "OUT"], "img_size=-28"),
        (["eval", "CKPT", "--threads", "-1"], "--threads"),
        (["eval", "CKPT", "--limit", "-1"], "--limit"),
        (["eval", "CKPT", "--batch-size", "0"], "--batch-size"),
        (["export", "CKPT", "--out", "DIR"], "is a directory"),
        (["export", "CKPT", "--out", ""], "empty file name"),
        (["export", "CKPT", "--out", "/proc/x.qvit.safetensors"], "cannot write"),
        (["export", "CKPT", "--onnx", "/dev/null"], "not a regular file"),
        (["export", "CKPT", "--check", "-1"], "--check"),
        (["ops", "--model", "deit_tiny_patch16_224", "--bits", "9"], "--bits"),
    ],
)
def test_qvit_arguments_are_checked_while_parsing(tmp_path, monkeypatch, capsys, argv, needle):
    import qvit.train

    def no_work(*a, **k):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(qvit.train, "run", no_work)
    subs = {"CKPT": str(tmp_path / "ckpt"), "DIR": str(tmp_path), "OUT": str(tmp_path / "run")}
    rc, err = _qvit(monkeypatch, capsys, *[subs.get(a, a) for a in argv])
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("qvit "), err


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["run", "M", "x.png", "--threads", "0"], "--threads"),
        (["run", "M", "x.png", "--threads", "-1"], "--threads"),
        (["run", "M", "x.png", "--threads", "two"], "--threads"),
        (["run", "M", "x.png", "--threads", "100000"], "--threads 100000"),  # over the CPUs: at run time
        (["run", "M", "x.png", "--topk", "0"], "--topk"),
        (["bench", "M", "--runs", "0"], "--runs"),
        (["bench", "M", "--warmup", "-1"], "--warmup"),
        (["bench", "M", "--threads", "-3"], "--threads"),
        (["run", "M"], "required"),
    ],
)
def test_edge_arguments_are_one_line_errors(monkeypatch, capsys, argv, needle):
    rc, err = _edge_main(monkeypatch, capsys, *["/nonexistent/m.so" if a == "M" else a for a in argv])
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("qvit-edge "), err


def test_help_still_exits_zero_with_usage(monkeypatch, capsys):
    from qvit_edge.cli import main

    with pytest.raises(SystemExit) as e:
        main(["run", "--help"])
    assert e.value.code == 0 and "--topk" in capsys.readouterr().out


@pytest.fixture
def compile_main(monkeypatch):
    """qvit_compile's main, with the compile itself replaced by a failure: every case here must be
    refused before it (the real one takes 25 s on a tiny model before writing --out)."""
    pytest.importorskip("tvm", reason="the compile stage (apache-tvm) is not installed")
    import qvit_compile.compiler
    from qvit_compile.__main__ import main

    def no_compile(*a, **k):
        raise AssertionError("compiled although the input was bad")

    monkeypatch.setattr(qvit_compile.compiler, "compile_model", no_compile)
    return main


@pytest.mark.parametrize(
    "out,needle",
    [
        ("DIR", "is a directory"),
        ("", "empty file name"),
        ("/proc/x.so", "cannot write into /proc"),
        ("/dev/null", "not a regular file"),
        ("DIR/", "names a directory"),
    ],
)
def test_compile_out_is_checked_before_compiling(tmp_path, capsys, compile_main, out, needle):
    model = str(tmp_path / "m.qvit.safetensors")
    intmodel.random_deit(seed=0).save(model)
    out = out.replace("DIR", str(tmp_path))
    assert compile_main(["--target", "x86_64", "--model", model, "--out", out, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qvit_compile: error: argument --out") and needle in err[0], (
        err
    )


def test_compile_bad_counts_are_one_line(tmp_path, capsys, compile_main):
    for argv in (["--bits", "0"], ["--bits", "true"], ["--seed", "-1"]):
        rc = compile_main(
            [
                "--target",
                "x86_64",
                "--random",
                "--arch",
                "deit_tiny_patch4_28",
                *argv,
                "--out",
                str(tmp_path / "m.so"),
            ]
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and argv[0] in err[0], err


# ----------------------------------------------------------------------------------------------
# checkpoints: export and compile refuse values they would otherwise use silently


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from qvit import checkpoint as ckpt
    from qvit.models import create_model

    torch.manual_seed(0)
    m = create_model("qvit_deit_tiny_patch4_28", bits=2, depth=1, embed_dim=16, num_heads=2)
    m.train()
    with torch.no_grad():
        m(torch.randn(4, 1, 28, 28))  # quantizer init
    d = tmp_path_factory.mktemp("ckpt") / "best"
    classes = [str(i) for i in range(10)]
    config = {
        "format": "qvit-checkpoint",
        "format_version": 1,
        "model": m.qvit_config.to_json(),
        "data": {
            "name": "fashion-mnist",
            "channels": 1,
            "classes": classes,
            "img_size": 28,
            "mean": [0.286],
            "std": [0.353],
            "interpolation": "bilinear",
            "crop_pct": 1.0,
        },
        "classes": classes,
    }
    ckpt.save_checkpoint(d, m, config)
    return d


def _edit_checkpoint(src, dst, config=None, tensors=None):
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    if config:
        c = json.loads((dst / "config.json").read_text())
        config(c)
        (dst / "config.json").write_text(json.dumps(c))
    if tensors:
        sd = load_file(str(dst / "model.safetensors"))
        tensors(sd)
        save_file(sd, str(dst / "model.safetensors"))
    return str(dst)


def _set(key, value):
    return lambda sd: sd.__setitem__(key, value(sd[key]))


def _nan_at(t, v):
    t = t.clone()
    t.view(-1)[0] = v
    return t


W = "blocks.0.mlp.fc1.weight"
WSTEP = "blocks.0.mlp.fc1.w_quant.step"
ASTEP = "blocks.0.attn.q_act.step"

CHECKPOINT_CASES = [
    (None, _set(W, lambda t: _nan_at(t, float("nan"))), f"{W} holds NaN or Inf"),
    (None, _set(W, lambda t: _nan_at(t, float("inf"))), f"{W} holds NaN or Inf"),
    (None, _set(WSTEP, lambda t: _nan_at(t, float("nan"))), f"{WSTEP} holds NaN or Inf"),
    (None, _set(WSTEP, lambda t: _nan_at(t, float("-inf"))), f"{WSTEP} holds NaN or Inf"),
    (None, _set(ASTEP, lambda t: _nan_at(t, 0.0)), f"activation quantizer step {ASTEP} is 0"),
    (None, _set(ASTEP, lambda t: _nan_at(t, -0.5)), f"activation quantizer step {ASTEP} is -0.5"),
    (None, _set("head.a_quant.step", lambda t: _nan_at(t, -1.0)), "step head.a_quant.step is -1"),
    (None, _set(W, lambda t: t.half()), f"{W} is float16, expected float32"),
    (None, _set(W, lambda t: t.double()), f"{W} is float64, expected float32"),
    (None, _set(W, lambda t: t.to(__import__("torch").int8)), f"{W} is int8, expected float32"),
    (lambda c: c["model"]["quant"].update(w_bits=True), None, "model.quant.w_bits=True"),
    (lambda c: c["model"]["quant"].update(a_bits="two"), None, "model.quant.a_bits='two'"),
    (lambda c: c["model"]["quant"].update(w_bits=9), None, "model.quant.w_bits=9"),
    (lambda c: c["model"]["quant"].update(embed_bits=None), None, "model.quant.embed_bits=None"),
    (lambda c: c["model"]["quant"].update(gelu_clip=-1), None, "model.quant.gelu_clip=-1"),
    (lambda c: c.update(format_version=99), None, "format_version 99"),
    (lambda c: c.update(format_version=True), None, "format_version True"),
    (lambda c: c.update(format="onnx"), None, "format 'onnx'"),
    (lambda c: c["model"]["timm_kwargs"].update(img_size=-28), None, "img_size=-28"),
    (lambda c: c["data"].update(img_size=-28), None, "data.img_size=-28"),
    (lambda c: c["data"].update(std=[0.0]), None, "data.std"),
    (lambda c: c["data"].update(crop_pct=float("nan")), None, "data.crop_pct"),
    (lambda c: c["data"].update(mean="gray"), None, "data.mean"),
]


def test_the_fixture_checkpoint_exports(checkpoint, tmp_path, monkeypatch, capsys):
    """The unedited checkpoint is fine, so each case below fails for its own edit alone."""
    rc, err = _qvit(
        monkeypatch, capsys, "export", str(checkpoint), "--out", str(tmp_path / "m.qvit.safetensors")
    )
    assert rc == 0, err


def test_a_weight_step_trained_below_zero_is_a_pruned_channel(checkpoint, tmp_path, monkeypatch, capsys):
    """Training uses max(step, 1e-8): a weight step <= 0 zeroes that output channel (the shipped
    W4A4 model has three). Export keeps the channel at the smallest step, never <= 0."""
    from qvit_compile.intmodel import IntModel

    ok = _edit_checkpoint(checkpoint, tmp_path / "pruned", tensors=_set(WSTEP, lambda t: _nan_at(t, -0.25)))
    out = tmp_path / "m.qvit.safetensors"
    rc, err = _qvit(monkeypatch, capsys, "export", ok, "--out", str(out))
    assert rc == 0, err
    w_step = IntModel.load(str(out)).tensors["blocks.0.mlp.fc1.w_step"]
    assert 0 < w_step[0] <= 1e-8 and (w_step[1:] > 1e-6).all()


@pytest.mark.parametrize("config,tensors,needle", CHECKPOINT_CASES)
def test_bad_checkpoints_are_refused_by_export_naming_the_field(
    checkpoint, tmp_path, monkeypatch, capsys, config, tensors, needle
):
    bad = _edit_checkpoint(checkpoint, tmp_path / "bad", config, tensors)
    out = tmp_path / "m.qvit.safetensors"
    rc, err = _qvit(monkeypatch, capsys, "export", bad, "--out", str(out))
    assert rc == 2 and not out.exists(), err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("qvit export: error:"), err
    rc, err = _qvit(monkeypatch, capsys, "eval", bad)  # every reader of checkpoints refuses it
    assert rc == 2 and len(err.strip().splitlines()) == 1 and needle in err, err


@pytest.mark.parametrize("config,tensors,needle", CHECKPOINT_CASES[::3])
def test_bad_checkpoints_are_refused_by_compile(
    checkpoint, tmp_path, capsys, compile_main, config, tensors, needle
):
    bad = _edit_checkpoint(checkpoint, tmp_path / "bad", config, tensors)
    assert (
        compile_main(["--target", "x86_64", "--model", bad, "--out", str(tmp_path / "m.so"), "--quiet"]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and err[0].startswith("qvit_compile: error:"), err


# ----------------------------------------------------------------------------------------------
# integer models: the reader (and so the compiler) refuses them, naming the field


@pytest.fixture(scope="module")
def deit():
    return intmodel.random_deit(seed=0)


def _bits(key, v):
    return lambda c: c["bits"].__setitem__(key, v)


def _op(i, key, v):
    return lambda c: c["graph"][i].__setitem__(key, v)


_GRAPH = intmodel.random_deit(seed=0).graph


def _first(kind):
    return next(i for i, op in enumerate(_GRAPH) if op["op"] == kind)


def _tensor(name, f):
    return lambda t: t.__setitem__(name, f(t[name].copy()))


def _at0(v):
    def f(a):
        a.reshape(-1)[0] = v
        return a

    return f


QL, AT, LN, GE = _first("qlinear"), _first("attention"), _first("layernorm"), _first("gelu")

INTMODEL_CASES = [
    (_bits("weight", "two"), None, "bits.weight='two'"),
    (_bits("weight", 0), None, "bits.weight=0"),
    (_bits("act", 9), None, "bits.act=9"),
    (_bits("embed", None), None, "bits.embed=None"),
    (_bits("head", True), None, "bits.head=True"),
    (lambda c: c["bits"].pop("act"), None, "bits lacks 'act'"),
    (_op(QL, "w_bits", True), None, "w_bits=True"),
    (_op(QL, "a_bits", "two"), None, "a_bits='two'"),
    (_op(QL, "w_bits", None), None, "w_bits=None"),
    (_op(AT, "bits", 9), None, "bits=9"),
    (_op(AT, "heads", "two"), None, "heads='two'"),
    (_op(AT, "scale", float("nan")), None, "scale=nan"),
    (_op(AT, "irm", 1), None, "irm=1"),
    (_op(LN, "eps", -1.0), None, "eps=-1.0"),
    (_op(GE, "clip", "big"), None, "clip='big'"),
    (_op(0, "patch", 0), None, "patch=0"),
    (lambda c: c.update(format_version=99), None, "format_version 99"),
    (lambda c: c.update(format_version=True), None, "format_version True"),
    (lambda c: c["input"].update(size=[-28, 28]), None, "input.size"),
    (lambda c: c["input"].update(channels=2), None, "input.channels=2"),
    (lambda c: c["input"].update(std=[0.0]), None, "input.std"),
    (lambda c: c["input"].update(crop_pct=0), None, "input.crop_pct=0"),
    (lambda c: c["input"].update(interpolation="magic"), None, "input.interpolation='magic'"),
    (lambda c: c.update(num_classes=True), None, "num_classes=True"),
    (None, _tensor("blocks.0.mlp.fc1.w_step", _at0(np.nan)), "'blocks.0.mlp.fc1.w_step' holds a step of nan"),
    (None, _tensor("blocks.0.mlp.fc1.w_step", _at0(0.0)), "'blocks.0.mlp.fc1.w_step' holds a step of 0.0"),
    (None, _tensor("blocks.0.mlp.fc1.a_step", lambda a: np.float32(-0.1)), "a_step' holds a step of -0.1"),
    (None, _tensor("blocks.0.attn.p_step", _at0(np.inf)), "'blocks.0.attn.p_step' holds a step of inf"),
    (None, _tensor("blocks.0.attn.q_zp", _at0(4)), "'blocks.0.attn.q_zp' holds zero points outside"),
    (None, _tensor("blocks.0.norm1.weight", _at0(np.nan)), "'blocks.0.norm1.weight' holds NaN or Inf"),
    (None, _tensor("pos_embed", _at0(-np.inf)), "'pos_embed' holds NaN or Inf"),
    (
        None,
        _tensor("blocks.0.mlp.fc1.w_step", lambda a: a.astype(np.float64)),
        "is float64, expected float32",
    ),
    (
        None,
        _tensor("blocks.0.mlp.fc1.w_step", lambda a: a.astype(np.float16)),
        "is float16, expected float32",
    ),
    (_op(AT, "irm_stat", "channel"), None, "irm_stat='channel' is not one of token, head"),
]


def _save_int(model, path, config=None, tensors=None):
    c = json.loads(json.dumps(model.config))
    t = dict(model.tensors)
    if config:
        config(c)
    if tensors:
        tensors(t)
    intmodel.write_safetensors(str(path), t, {"qvit": json.dumps(c)})
    return str(path)


@pytest.mark.parametrize("config,tensors,needle", INTMODEL_CASES)
def test_bad_integer_models_are_refused_naming_the_field(deit, tmp_path, config, tensors, needle):
    path = _save_int(deit, tmp_path / "bad.qvit.safetensors", config, tensors)
    with pytest.raises(intmodel.IntModelError) as e:
        intmodel.IntModel.load(path)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg and msg.startswith(path), msg


def test_the_unedited_integer_model_loads(deit, tmp_path):
    intmodel.IntModel.load(_save_int(deit, tmp_path / "ok.qvit.safetensors"))


@pytest.mark.parametrize("config,tensors,needle", INTMODEL_CASES[::4])
def test_bad_integer_models_are_refused_by_compile(
    deit, tmp_path, capsys, compile_main, config, tensors, needle
):
    path = _save_int(deit, tmp_path / "bad.qvit.safetensors", config, tensors)
    assert (
        compile_main(["--target", "x86_64", "--model", path, "--out", str(tmp_path / "m.so"), "--quiet"]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and err[0].startswith("qvit_compile: error:"), err


def test_a_config_of_the_wrong_types_everywhere_is_still_one_line(deit, tmp_path):
    """Whatever a field holds, reading never raises anything but IntModelError."""
    rng = np.random.default_rng(1)
    junk = [None, True, -1, 0, 2.5, float("nan"), "x", [], [1], {}, {"a": 1}, [1, 2, 3]]
    base = json.loads(json.dumps(deit.config))
    n = 0
    for i, op in enumerate(base["graph"]):
        for key in op:
            for v in (junk[int(rng.integers(len(junk)))], junk[int(rng.integers(len(junk)))]):
                c = json.loads(json.dumps(base))
                c["graph"][i][key] = v
                m = intmodel.IntModel(c, dict(deit.tensors))
                try:
                    m.validate()
                except intmodel.IntModelError as e:
                    assert "\n" not in str(e)
                    n += 1
    assert n > 50
