"""Whole models through the compile stage and the device executor: random tiny DeiT and Swin
integer models -> model.so (x86_64 natively, aarch64 under qemu) -> qvit_edge.model, checked
against the numpy integer reference (qvit_compile.intmodel.reference) layer by layer and end to end."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tvm")

from qvit_compile import compiler, intmodel, packing  # noqa: E402
from qvit_compile.intmodel import reference  # noqa: E402
from qvit_edge import model as model_so  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Logits tolerance: float glue (LayerNorm sums, exp, erf) may differ from numpy in the last ulp;
# with identical integer codes that is all that differs.
ATOL = 1e-4

MODELS = {
    "deit_w2": lambda: intmodel.random_deit(bits=2, distilled=True, seed=1),
    "deit_w1": lambda: intmodel.random_deit(bits=1, irm=False, depth=1, seed=2),
    "swin_w4": lambda: intmodel.random_swin(bits=4, seed=3),
    # per-head IRM: statistics over each (item, head) T x d block, summed in the reference's order
    "deit_w2_head": lambda: intmodel.random_deit(bits=2, irm_stat="head", distilled=True, seed=4),
    "swin_w3_head": lambda: intmodel.random_swin(bits=3, irm_stat="head", seed=5),
}


@pytest.fixture(scope="session")
def compiled(tmp_path_factory):
    """name -> (IntModel, path of its x86_64 model.so); built once per session."""
    out = {}
    d = tmp_path_factory.mktemp("model_so")
    for name, make in MODELS.items():
        m = make()
        path = str(d / f"{name}.so")
        compiler.compile_model(m, "x86_64", path, mcpu="x86-64-v3", progress=lambda *a: None)
        out[name] = (m, path)
        # the same model with every intermediate kept (no shared arena), for layer-by-layer checks
        compiler.compile_model(m, "x86_64", path + ".keep.so", mcpu="x86-64-v3", progress=lambda *a: None,
                               keep_intermediates=True)
    # deit_w2 and swin_w3_head for this machine's CPU too: the C micro-kernels' AVX-512 paths
    # (VPOPCNTDQ, VNNI) where the CPU has them (x86-64-v3 above runs their AVX2 / plain C paths),
    # with the GEMM engine the table picks for this CPU (int8dot where it has VNNI)
    for name in ("deit_w2", "swin_w3_head"):
        m = MODELS[name]()
        path = str(d / f"{name}_host.so")
        compiler.compile_model(m, "x86_64", path + ".keep.so", progress=lambda *a: None,
                               keep_intermediates=True)
        out[f"{name}_host"] = (m, path)
    # each GEMM engine forced in turn (compile/engines.py), end to end and layer by layer
    for variant, (name, mcpu, engine) in ENGINE_VARIANTS.items():
        m = MODELS[name]()
        path = str(d / f"{variant}.so")
        compiler.compile_model(m, "x86_64", path, mcpu=mcpu, engine=engine, progress=lambda *a: None)
        compiler.compile_model(m, "x86_64", path + ".keep.so", mcpu=mcpu, engine=engine,
                               progress=lambda *a: None, keep_intermediates=True)
        out[variant] = (m, path)
    return out


# variant -> (model, mcpu (None: this machine's), forced engine)
ENGINE_VARIANTS = {
    "deit_w2_int8dot": ("deit_w2", "x86-64-v3", "int8dot"),  # int8dot's portable C path
    "swin_w4_int8dot": ("swin_w4", "x86-64-v3", "int8dot"),
    "deit_w1_int8dot": ("deit_w1", "x86-64-v3", "int8dot"),
    "deit_w2_head_host_bitserial": ("deit_w2_head", None, "bitserial"),  # bit-serial with AVX-512
    "swin_w3_head_host_int8dot": ("swin_w3_head", None, "int8dot"),  # VNNI where the CPU has it
    # AMX tiles where the CPU and the OS allow them (amx_skip), on the AVX-512 build and the AVX2 one;
    # Swin's K = 48 / 96 / 192 pad to 64 / 128 / 192 and its 49-token windows to 64 rows
    "deit_w2_host_amx": ("deit_w2", None, "int8dot-amx"),
    "swin_w3_head_amx": ("swin_w3_head", "x86-64-v3", "int8dot-amx"),
    "deit_w1_amx": ("deit_w1", "x86-64-v3", "int8dot-amx"),
    "swin_w3_head_bsneon": ("swin_w3_head", "x86-64-v3", "bitserial-neon"),  # its portable C path
    "deit_w1_bsneon": ("deit_w1", "x86-64-v3", "bitserial-neon"),
    "swin_w3_head_lut": ("swin_w3_head", "x86-64-v3", "lut-neon"),  # its portable C path
    "deit_w1_lut": ("deit_w1", "x86-64-v3", "lut-neon"),
}


AMX_WHY = {-1: "this CPU has no AMX-INT8",
           -2: "the OS does not enable AMX tiles (XCR0 / arch_prctl, Linux < 5.16)", -3: "QVIT_NO_AMX is set"}


def amx_skip(name: str, path: str) -> None:
    """int8dot-amx variants run their AMX path or skip, saying why: the same file would silently pass
    on its VNNI fallback (native/model/int8dot.c qvit_int8dot_amx_state)."""
    if ENGINE_VARIANTS.get(name, (None, None, None))[2] != "int8dot-amx":
        return
    import ctypes
    state = ctypes.CDLL(path).qvit_int8dot_amx_state()
    if state != 1:
        pytest.skip(AMX_WHY.get(state, f"AMX state {state}"))


def _images(m, n, seed=0):
    return np.random.default_rng(seed).standard_normal((n,) + m.input_shape).astype(np.float32)


@pytest.mark.cpu_feature
@pytest.mark.parametrize("name", list(MODELS) + list(ENGINE_VARIANTS))
def test_logits_match_reference(compiled, name):
    m, path = compiled[name]
    amx_skip(name, path)
    x = _images(m, 6)
    with model_so.load(path) as so:
        y = so.run(x)
    ref = reference.run(m, x)
    assert y.shape == ref.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, ref, atol=ATOL, rtol=1e-4)
    assert (y.argmax(1) == ref.argmax(1)).all()


@pytest.mark.cpu_feature
@pytest.mark.parametrize("name", ["deit_w2_host_amx", "swin_w3_head_amx"])
def test_amx_and_its_fallback_write_the_same_bits(compiled, name, tmp_path):
    """One int8dot-amx model.so, its AMX tiles here and its int8dot path (QVIT_NO_AMX, another
    process: the check is once per process): the same logits bit for bit."""
    m, path = compiled[name]
    amx_skip(name, path)
    x = _images(m, 3, seed=7)
    np.save(tmp_path / "x.npy", x)
    code = ("import sys, numpy as np; from qvit_edge import model as M; "
            "so = M.load(sys.argv[1]); np.save(sys.argv[3], so.run(np.load(sys.argv[2]))); "
            "import ctypes; print(ctypes.CDLL(sys.argv[1]).qvit_int8dot_amx_state())")
    r = subprocess.run([sys.executable, "-c", code, path, str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                       capture_output=True, text=True, env={**os.environ, "QVIT_NO_AMX": "1"}, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "-3", r.stdout + r.stderr
    with model_so.load(path) as so:
        y = so.run(x)
    np.testing.assert_array_equal(y, np.load(tmp_path / "y.npy"))


def _codes(planes: np.ndarray) -> np.ndarray:
    """[..., bits, R, W] uint64 planes -> [..., R, W*64] codes."""
    bits = (planes[..., None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
    bits = bits.reshape(*planes.shape[:-1], -1).astype(np.int64)
    weights = (1 << np.arange(planes.shape[-3]))[:, None, None]
    return (bits * weights).sum(axis=-3)


@pytest.mark.cpu_feature
@pytest.mark.parametrize(
    "name", ["deit_w2", "swin_w4", "deit_w2_host", "deit_w2_head", "swin_w3_head", "swin_w3_head_host",
             *ENGINE_VARIANTS]
)
def test_every_layer_integer_codes_equal_reference(compiled, name):
    """For every quantized op: the activation codes the compiled kernels packed (linear inputs;
    q, k, v and the attention probabilities) equal the reference's, and its float output matches."""
    m, path = compiled[name]
    amx_skip(name, path + ".keep.so")
    x = _images(m, 1, seed=5)
    _, tr = reference.run(m, x, trace=True)
    so = model_so.load(path + ".keep.so")
    so.run(x)
    names = set(so._plan["tensors"])
    checked = 0
    for op in m.graph:
        o = op["out"]
        ints = tr.ints.get(o)
        if ints is None:
            continue
        if op["op"] in ("qlinear", "patch_embed") and f"{o}.planes" in names:
            a = ints["a"].reshape(-1, ints["a"].shape[-1])
            got = _codes(so.tensor(f"{o}.planes"))[: a.shape[0], : a.shape[1]]
            np.testing.assert_array_equal(got, a, err_msg=f"{o}: input codes")
            checked += 1
        if op["op"] == "qlinear" and f"{o}.acodes" in names:  # the int8dot engine's row-major codes
            a = ints["a"].reshape(-1, ints["a"].shape[-1])
            got = so.tensor(f"{o}.acodes")
            np.testing.assert_array_equal(got[: a.shape[0], : a.shape[1]], a, err_msg=f"{o}: input codes")
            assert not got[a.shape[0]:].any() and not got[:, a.shape[1]:].any()
            checked += 1
        if op["op"] == "attention":
            t = ints["q"].shape[2]
            d = ints["q"].shape[3]
            for key, pl, length in (("q", "qp", d), ("k", "kp", d), ("p", "pp", t)):
                got = _codes(so.tensor(f"{o}.{pl}"))[..., :length]
                np.testing.assert_array_equal(got, ints[key], err_msg=f"{o}: {key} codes")
            got_v = _codes(so.tensor(f"{o}.vp"))[..., :t]
            np.testing.assert_array_equal(got_v, np.swapaxes(ints["v"], -1, -2), err_msg=f"{o}: v codes")
            checked += 1
        if o in names and "view" not in so._plan["tensors"][o]:
            np.testing.assert_allclose(so.tensor(o), tr.values[o], atol=ATOL, rtol=1e-4, err_msg=o)
    so.close()
    assert checked >= 4


def test_packed_weights_in_the_file_are_the_models(compiled):
    m, path = compiled["deit_w2"]
    so = model_so.load(path)
    op = next(op for op in m.graph if op["op"] == "qlinear" and op["w_bits"] == 2)
    w = m.params(op)["weight"]
    np.testing.assert_array_equal(so.tensor(f"{op['param']}.wpanel"), packing.weight_panel(w, 2))
    so.close()


def test_metadata(compiled):
    m, path = compiled["deit_w2"]
    with model_so.load(path) as so:
        meta = so.meta
        assert meta["format"] == "qvit-model-so" and meta["format_version"] == 2
        assert meta["arch"] == m.config["arch"] and meta["family"] == "deit"
        assert meta["bits"] == m.config["bits"] and meta["num_classes"] == m.num_classes
        assert meta["target"]["arch"] == "x86_64" and meta["target"]["mcpu"] == "x86-64-v3"
        assert meta["input"]["size"] == m.config["input"]["size"]
        assert len(meta["classes"]) == m.num_classes and len(meta["weights_sha256"]) == 64
        kinds = {s["kind"] for s in so.steps}
        assert {"qlinear", "attention", "patch_embed"} <= kinds


def test_profile_per_op_kind(compiled):
    m, path = compiled["swin_w4"]
    so = model_so.load(path, profile=True)
    so.run(_images(m, 2))
    prof = so.profile()
    assert {"qlinear", "attention", "window", "patch_merge", "layernorm"} <= set(prof)
    assert all(v >= 0 for v in prof.values()) and prof["qlinear"] > 0
    so.reset_profile()
    assert all(v == 0 for v in so.profile().values())
    so.close()
    plain = model_so.load(path)
    with pytest.raises(model_so.ModelError, match="profile=True"):
        plain.profile()


def test_two_threads_same_logits(compiled):
    """Parallel kernels on the runtime's thread pool give the same logits (in a subprocess with a
    time limit, so a pool deadlock fails the test instead of hanging the suite)."""
    m, path = compiled["deit_w2"]
    x = _images(m, 3)
    ref = reference.run(m, x)
    code = ("import sys, numpy as np; from qvit_edge import model\n"
            "so = model.load(sys.argv[1], threads=2); x = np.load(sys.argv[2])\n"
            "np.save(sys.argv[3], so.run(x))\n")
    d = os.path.dirname(path)
    np.save(os.path.join(d, "x2.npy"), x)
    args = [path, os.path.join(d, "x2.npy"), os.path.join(d, "y2.npy")]
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.load(os.path.join(d, "y2.npy")), ref, atol=ATOL, rtol=1e-4)


def test_load_errors(compiled, tmp_path):
    _, path = compiled["deit_w1"]
    with pytest.raises(model_so.ModelError, match="no such file"):
        model_so.load(str(tmp_path / "none.so"))
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"\x7fELF not really")
    with pytest.raises(model_so.ModelError, match="truncated ELF header"):  # checked before dlopen
        model_so.load(str(junk))
    # flip the recorded weights checksum: the file no longer verifies
    raw = open(path, "rb").read()
    with model_so.load(path) as so:
        digest = so.meta["weights_sha256"].encode()
    bad = tmp_path / "bad.so"
    bad.write_bytes(raw.replace(digest, digest[::-1]))
    with pytest.raises(model_so.ModelError, match="checksum"):
        model_so.load(str(bad))
    with model_so.load(path) as so:
        with pytest.raises(model_so.ModelError, match="input must be"):
            so.run(np.zeros((1, 3, 5, 5), np.float32))


AARCH64_PY = os.path.join(ROOT, "scripts", "aarch64-python.sh")


@pytest.mark.qemu
@pytest.mark.skipif(not shutil.which("qemu-aarch64") or not shutil.which("aarch64-linux-gnu-gcc"),
                    reason="needs qemu-user and gcc-aarch64-linux-gnu")
@pytest.mark.parametrize("name,mcpu,forced,engine", [
    # the Pi 4 core: the table picks bitserial-neon (byte-counter NEON micro-kernel) at 2 bits and
    # lut-neon (NEON TBL table lookups) at 3-4 bits
    ("deit_w2", "cortex-a72", None, "bitserial-neon"), ("swin_w3_head", "cortex-a72", None, "lut-neon"),
    ("swin_w3_head", "cortex-a72", "bitserial-neon", "bitserial-neon"),
    ("deit_w2_head", "cortex-a72", "bitserial", "bitserial"),  # TVM's bit-serial kernel on aarch64
    # the Pi 5 core: the table picks int8dot, its SDOT path (qemu's max CPU has the dot product)
    ("deit_w2_head", "cortex-a76", None, "int8dot"), ("swin_w3_head", "cortex-a76", None, "int8dot"),
])
def test_aarch64_model_so_under_qemu(tmp_path, name, mcpu, forced, engine, monkeypatch):
    """Cross-compiled for the Cortex-A72 (Pi 4) or A76 (Pi 5), run by the aarch64 runtime (no TVM)
    under qemu, with the engine the table picks for that core (or one forced)."""
    monkeypatch.delenv("QVIT_GEMM_ENGINE", raising=False)
    m = MODELS[name]()
    path = str(tmp_path / f"{name}_arm.so")
    meta = compiler.compile_model(m, "aarch64", path, mcpu=mcpu, engine=forced, progress=lambda *a: None)
    lowbit = {r["engine"] for r in meta["gemm"]["layers"] if r["kind"] == "qlinear" and r["w_bits"] <= 4}
    assert lowbit == {engine}
    x = _images(m, 3)
    np.save(tmp_path / "x.npy", x)
    r = subprocess.run(["bash", AARCH64_PY], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        pytest.skip(f"no aarch64 Python for qemu: {r.stderr.strip().splitlines()[-1:]}")
    py = r.stdout.strip().splitlines()[-1]
    code = ("import sys, numpy as np; from qvit_edge import model\n"
            "so = model.load(sys.argv[1], threads=2)\n"
            "assert so.meta['target']['arch'] == 'aarch64'\n"
            "np.save(sys.argv[3], so.run(np.load(sys.argv[2])))\n")
    r = subprocess.run([py, "-c", code, path, str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), reference.run(m, x), atol=ATOL, rtol=1e-4)
