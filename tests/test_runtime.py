"""`qvit-edge run / bench / info` on real compiled model.so files, on this machine and under qemu-aarch64.

A tiny random-weight DeiT integer model is compiled once per session for x86_64 and aarch64
(qvit_compile). The images are real Fashion-MNIST test images written as PNG and JPEG. Under
qemu the aarch64 model.so runs in the aarch64 Python of scripts/aarch64-python.sh (numpy, cffi,
Pillow and the cross-compiled native library only) and must predict what the x86_64 build does.
"""
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import one_line_error as _one_line_error
from PIL import Image

from qvit_edge.preflight import _open_elf, _symbol_reader, available_cpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
HOST = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}.get(
    platform.machine().lower())


def _edge(*args, python=sys.executable, timeout=300):
    r = subprocess.run([python, "-m", "qvit_edge", *args], capture_output=True, text=True, timeout=timeout,
                       cwd=ROOT)
    return r




@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """{arch: path} of the same tiny integer model compiled for x86_64 and aarch64 (+ the int model)."""
    pytest.importorskip("tvm", reason="the compile stage (apache-tvm) is not installed")
    from qvit_compile import intmodel
    from qvit_compile.compiler import compile_model

    d = tmp_path_factory.mktemp("models")
    m = intmodel.random_deit(seed=0)
    out = {"int": m}
    for arch in ("x86_64", "aarch64"):
        if arch == "aarch64" and not shutil.which("aarch64-linux-gnu-gcc"):
            continue
        out[arch] = str(d / f"deit_{arch}.so")
        compile_model(m, arch, out[arch], progress=lambda *a: None)
    return out


@pytest.fixture(scope="session")
def host_model(models):
    if HOST not in models:
        pytest.skip(f"no model built for this machine ({platform.machine()})")
    return models[HOST]


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """Six Fashion-MNIST test images, as 8-bit gray PNG, RGB JPEG and 16-bit PNG."""
    if not os.path.exists(FMNIST):
        pytest.skip(f"{FMNIST} missing (Debian package dataset-fashion-mnist)")
    with gzip.open(FMNIST) as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:6]
    d = tmp_path_factory.mktemp("images")
    paths = []
    for i, a in enumerate(raw):
        if i % 3 == 0:
            p = d / f"{i}.png"
            Image.fromarray(a, "L").save(p)
        elif i % 3 == 1:
            p = d / f"{i}.jpg"
            Image.fromarray(np.repeat(a[..., None], 3, -1), "RGB").save(p, quality=95)
        else:
            p = d / f"{i}_16bit.png"
            Image.fromarray(a.astype(np.uint16) * 257).save(p)  # 16-bit, same picture
        paths.append(str(p))
    return paths


# ------------------------------------------------------------------------------------------ info


def test_info_json_describes_both_builds(models):
    for arch in ("x86_64", "aarch64"):
        if arch not in models:
            continue
        r = _edge("info", models[arch], "--json")
        assert r.returncode == 0, r.stderr
        d = json.loads(r.stdout)
        assert d["schema"] == "qvit-edge.info/1"
        assert d["machine"] == arch and d["target"]["arch"] == arch
        assert d["runs_here"] == (arch == HOST)
        assert d["bits"] == {"weight": 2, "act": 2, "embed": 8, "head": 8}
        assert d["input"]["size"] == [28, 28] and d["input"]["channels"] == 1
        assert d["num_classes"] == 10 == len(d["classes"])
        assert d["size_bytes"] == os.path.getsize(models[arch])
        assert len(d["weights_sha256"]) == 64


def test_info_reads_large_weights_in_chunks_with_the_same_checksum(host_model, monkeypatch):
    import qvit_edge.preflight as pf

    whole = pf.read_model_doc(host_model)
    monkeypatch.setattr(pf, "STREAM_ABOVE", 0)
    assert pf.read_model_doc(host_model) == whole


def test_info_text(host_model):
    r = _edge("info", host_model)
    assert r.returncode == 0, r.stderr
    assert "weight=2, act=2" in r.stdout and "runs here: yes" in r.stdout and "(verified)" in r.stdout


# ------------------------------------------------------------------------------------------ run


def test_run_predicts_what_the_integer_reference_predicts(host_model, models, images):
    from qvit_compile.intmodel import reference
    from qvit_edge.preprocess import InputSpec, load_batch

    r = _edge("run", host_model, *images, "--topk", "10", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["schema"] == "qvit-edge.run/1" and d["threads"] == 1
    assert [x["image"] for x in d["results"]] == images
    m = models["int"]
    logits = reference.run(m, load_batch(images, InputSpec.from_meta(m.config))).astype(np.float64)
    names = m.config.get("classes") or [str(j) for j in range(10)]
    for res, lg in zip(d["results"], logits):
        top = res["top"]
        assert len(top) == 10 and sorted(t["index"] for t in top) == list(range(10))
        assert all(t["class"] == names[t["index"]] for t in top)
        probs = [t["prob"] for t in top]
        assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-6
        assert res["latency_ms"] > 0 and res["preprocess_ms"] > 0
        p = np.exp(lg - lg.max())
        p /= p.sum()
        np.testing.assert_allclose(probs, p[[t["index"] for t in top]], atol=1e-4)
        assert top[0]["index"] == int(np.argmax(lg))


def test_run_reuses_the_model_for_several_images_and_is_deterministic(host_model, images):
    r = _edge("run", host_model, images[0], images[1], images[0], "--json", "--topk", "3")
    res = json.loads(r.stdout)["results"]
    assert res[0]["top"] == res[2]["top"]
    assert res[0]["top"] != res[1]["top"]


def test_run_text_output(host_model, images):
    r = _edge("run", host_model, images[0], "--topk", "2")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith(images[0]) and "ms inference" in lines[0]
    assert lines[1].lstrip().startswith("1. ") and lines[2].lstrip().startswith("2. ") and "%" in lines[2]


def test_run_reports_a_bad_image_and_still_runs_the_others(host_model, images, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(open(images[1], "rb").read()[:200])
    r = _edge("run", host_model, images[0], str(bad), images[2], "--json")
    line = _one_line_error(r, str(bad), "cannot decode")
    assert line.startswith("qvit-edge run: error:")
    res = json.loads(r.stdout)["results"]
    assert "top" in res[0] and "error" in res[1] and "top" in res[2]


# ------------------------------------------------------------------------------------------ bench


def test_bench_json(host_model):
    r = _edge("bench", host_model, "--warmup", "2", "--runs", "20", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["schema"] == "qvit-edge.bench/2" and d["runs"] == 20 and d["threads"] == 1 and d["batch"] == 1
    lat = d["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert d["images_per_s"] > 0 and d["memory_mb"]["peak_rss"] > 0
    # every op kind of a DeiT shows in the profile, and the shares add up
    assert {"patch_embed", "qlinear", "attention", "layernorm"} <= set(d["profile_ms"])
    assert abs(sum(d["profile_share"].values()) - 1) < 1e-6


def test_bench_text_and_no_profile(host_model):
    r = _edge("bench", host_model, "--runs", "3", "--warmup", "0", "--no-profile")
    assert r.returncode == 0, r.stderr
    assert "p50" in r.stdout and "images/s" in r.stdout and "profile" not in r.stdout


def test_1000_inferences_keep_rss_flat(host_model):
    r = _edge("bench", host_model, "--warmup", "20", "--runs", "1000", "--json", "--no-profile")
    assert r.returncode == 0, r.stderr
    mem = json.loads(r.stdout)["memory_mb"]
    assert mem["rss_after_runs"] - mem["rss_before_runs"] < 1.0, mem  # MB over 1000 runs


# ------------------------------------------------------------------------------------------ bad input


def _patched(src, dst, old: bytes, new: bytes):
    data = open(src, "rb").read()
    assert data.count(old) == 1
    open(dst, "wb").write(data.replace(old, new))
    return str(dst)


@pytest.fixture(scope="session")
def bad_models(host_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    data = open(host_model, "rb").read()
    blob = _open_elf(host_model, _symbol_reader, ("qvit_model_blob",))["qvit_model_blob"]
    assert isinstance(blob, bytes) and len(blob) > 100
    at = data.find(blob) + len(blob) // 2
    corrupt = bytearray(data)
    corrupt[at] ^= 0x40
    (d / "corrupt.so").write_bytes(bytes(corrupt))
    not_elf = d / "model.so"
    not_elf.write_text("#!/bin/sh\necho hi\n")
    out = {
        "newer": _patched(host_model, d / "newer.so", b'"format_version":2', b'"format_version":9'),
        "older": _patched(host_model, d / "older.so", b'"format_version":2', b'"format_version":0'),
        "corrupt": str(d / "corrupt.so"),
        "not_elf": str(not_elf),
        "empty": str(d / "empty.so"),
        "missing": str(d / "missing.so"),
    }
    (d / "empty.so").write_bytes(b"")
    from qvit_edge import _native

    out["not_qvit"] = _native.__file__  # a real shared library for this CPU, but no model in it
    return out


@pytest.mark.parametrize("kind,needles", [
    ("newer", ["version 9", "not supported"]),
    ("older", ["version 0", "not supported"]),
    ("corrupt", ["checksum"]),
    ("not_elf", ["no ELF header"]),
    ("empty", ["empty file"]),
    ("missing", ["no such file"]),
    ("not_qvit", ["not a qvit-edge model"]),
])
@pytest.mark.parametrize("verb", ["run", "bench", "info"])
def test_bad_models_give_one_line_errors(bad_models, images, kind, needles, verb):
    args = {"run": [images[0]], "bench": ["--runs", "1"], "info": []}[verb]
    r = _edge(verb, bad_models[kind], *args)
    _one_line_error(r, bad_models[kind], *needles)


def test_model_for_another_cpu_is_refused_before_loading(models, images):
    other = {"x86_64": "aarch64", "aarch64": "x86_64"}.get(HOST)
    if other not in models:
        pytest.skip("no model for another CPU built")
    for verb, args in (("run", [images[0]]), ("bench", [])):
        _one_line_error(_edge(verb, models[other], *args), f"built for {other}", f"this machine is {HOST}")


@pytest.mark.parametrize("flag", [["--threads", "0"], ["--threads", "-2"], ["--threads", "two"],
                                  ["--threads", "100000"]])
@pytest.mark.parametrize("verb", ["run", "bench"])
def test_wrong_thread_count(host_model, images, verb, flag):
    args = [images[0]] if verb == "run" else []
    _one_line_error(_edge(verb, host_model, *args, *flag), "--threads")


@pytest.mark.parametrize("verb,args,needle", [
    ("run", ["--topk", "0"], "--topk"), ("bench", ["--runs", "0"], "--runs"),
    ("bench", ["--warmup", "-1"], "--warmup")])
def test_bad_counts(host_model, images, verb, args, needle):
    extra = [images[0]] if verb == "run" else []
    _one_line_error(_edge(verb, host_model, *extra, *args), needle)


def test_two_threads_give_the_same_predictions(host_model, images):
    one = json.loads(_edge("run", host_model, *images, "--json").stdout)["results"]
    two = json.loads(_edge("run", host_model, *images, "--json", "--threads", "2").stdout)["results"] \
        if available_cpus() >= 2 else one
    assert [r["top"] for r in one] == [r["top"] for r in two]


# ------------------------------------------------------------------------------------------ qemu


@pytest.fixture(scope="session")
def aarch64_python():
    if HOST == "aarch64":
        return sys.executable
    for tool in ("qemu-aarch64", "aarch64-linux-gnu-gcc", "apt-get", "dpkg-deb"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} not installed (make system-deps)")
    r = subprocess.run(["bash", os.path.join(ROOT, "scripts", "aarch64-python.sh")], capture_output=True,
                       text=True, timeout=900)
    if r.returncode != 0:
        pytest.fail(f"scripts/aarch64-python.sh failed: {r.stderr.strip().splitlines()[-1:]}")
    return r.stdout.strip().splitlines()[-1]


@pytest.mark.qemu
def test_aarch64_python_has_only_the_runtime_dependencies(aarch64_python):
    code = ("import importlib.util, platform, numpy, cffi, PIL, qvit_edge._native as n\n"
            "bad = [m for m in ('tvm', 'tvm_ffi', 'torch') if importlib.util.find_spec(m)]\n"
            "print(platform.machine(), bad, n.lib.qv_pool_threads())")
    r = subprocess.run([aarch64_python, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "aarch64" and "[]" in r.stdout


@pytest.fixture(scope="session")
def swin_models(models, tmp_path_factory):
    """A tiny Swin (windows, shifts, masks, patch merging) at 3 bits, for both CPUs."""
    from qvit_compile import intmodel
    from qvit_compile.compiler import compile_model

    if "aarch64" not in models:
        pytest.skip("no aarch64 cross compiler")
    d = tmp_path_factory.mktemp("swin")
    m = intmodel.random_swin(bits=3, seed=5)
    out = {}
    for arch in ("x86_64", "aarch64"):
        out[arch] = str(d / f"swin_{arch}.so")
        compile_model(m, arch, out[arch], progress=lambda *a: None)
    return out


@pytest.mark.qemu
@pytest.mark.parametrize("family", ["deit", "swin"])
def test_aarch64_build_under_qemu_predicts_what_x86_64_does(request, family, images, aarch64_python):
    builds = request.getfixturevalue("models" if family == "deit" else "swin_models")
    images = images if family == "deit" else images[:3]  # each format once
    if "aarch64" not in builds or "x86_64" not in builds:
        pytest.skip("needs both builds")
    a64 = _edge("run", builds["aarch64"], *images, "--topk", "10", "--json", python=aarch64_python)
    assert a64.returncode == 0, a64.stderr
    x86 = _edge("run", builds["x86_64"], *images, "--topk", "10", "--json",
                python=sys.executable if HOST == "x86_64" else aarch64_python)
    ra, rx = json.loads(a64.stdout)["results"], json.loads(x86.stdout)["results"]
    assert len(ra) == len(images) == len(rx)
    for a, x in zip(ra, rx):
        assert [t["index"] for t in a["top"]] == [t["index"] for t in x["top"]]
        np.testing.assert_allclose([t["prob"] for t in a["top"]], [t["prob"] for t in x["top"]], atol=1e-6)


@pytest.mark.qemu
def test_aarch64_bench_and_info_under_qemu(models, aarch64_python):
    if "aarch64" not in models:
        pytest.skip("no aarch64 build")
    r = _edge("bench", models["aarch64"], "--warmup", "1", "--runs", "5", "--json", python=aarch64_python)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["machine"] == "aarch64" and d["runs"] == 5 and "attention" in d["profile_ms"]
    r = _edge("info", models["aarch64"], "--json", python=aarch64_python)
    assert json.loads(r.stdout)["runs_here"] is True
    if "x86_64" in models:  # and the other way round: the x86_64 build is refused on the board
        _one_line_error(_edge("run", models["x86_64"], __file__, python=aarch64_python),
                        "built for x86_64, this machine is aarch64")


# ------------------------------------------------------------------------------------------ pi-bench


def _pi_bench(pi, model, *flags, env=None):
    return subprocess.run(["bash", os.path.join(ROOT, "scripts", "pi-bench.sh"), pi, model, *flags],
                          capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


def test_pi_bench_refuses_a_model_for_another_cpu(models):
    if "x86_64" not in models:
        pytest.skip("no x86_64 build")
    r = _pi_bench("pi@nowhere.invalid", models["x86_64"])
    _one_line_error(r, "built for x86_64", "TARGET=aarch64")


@pytest.mark.qemu
def test_pi_bench_bundle_runs_on_an_aarch64_python(models, aarch64_python, tmp_path):
    """The same bundle and board script as over ssh, run in a folder with the qemu aarch64 Python
    as the board's python3: it must run the bundled wheel's runtime and print the bench JSON."""
    if "aarch64" not in models:
        pytest.skip("no aarch64 build")
    board = tmp_path / "board"
    r = _pi_bench(f"local:{board}", models["aarch64"], "--runs", "3", "--warmup", "1",
                  env={"PI_PYTHON": aarch64_python})
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["schema"] == "qvit-edge.bench/2" and d["machine"] == "aarch64" and d["runs"] == 3
    # the runtime is the aarch64 wheel, unpacked on the board: its prebuilt native library is used
    (whl,) = board.glob("qvit_edge-*manylinux_2_17_aarch64.whl")
    assert (board / "model.so").exists() and (board / "lib" / "qvit_edge" / "_native.abi3.so").exists()
    where = subprocess.run([aarch64_python, "-c", "import qvit_edge._native as n; print(n.__file__)"],
                           capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(board / "lib")})
    assert where.stdout.strip() == str(board / "lib" / "qvit_edge" / "_native.abi3.so"), where.stderr
    saved = r.stderr.strip().splitlines()[-1].split("saved ")[-1]
    assert json.load(open(os.path.join(ROOT, saved))) == d
    os.remove(os.path.join(ROOT, saved))


def test_pi_bench_says_when_the_board_cannot_be_reached(models):
    if "aarch64" not in models or not shutil.which("ssh"):
        pytest.skip("needs the aarch64 build and ssh")
    r = _pi_bench("pi@board.invalid", models["aarch64"])  # .invalid never resolves (RFC 2606)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last == "pi-bench: error: the benchmark on pi@board.invalid failed (see above)"
