"""Hostile model files: every one ends in ONE stderr line and exit status 2 from `qvit-edge info / run /
bench` (never a signal, a hang or a traceback), and qvit_edge.model.load raises ModelError.

One tiny DeiT is compiled per session (x86_64; an aarch64 build only for the changed-CPU case). Bad
files are copies of it: symbols patched in place, the metadata JSON inside qvit_model_meta rewritten
(within its fixed size, padded with spaces before the NUL), ELF header fields overwritten, and the
checksum recomputed where the check under test is the one behind it (model_schema, bounds). A seeded
fuzz test applies random bit flips and random field edits of the metadata and plan.
"""
from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import one_line_error as _one_line_error

from qvit_edge import model_schema, preflight

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 60  # s per command: a hang fails the test instead of stalling the suite
VERB_ARGS = {"info": [], "run": ["IMAGE", "--json"], "bench": ["--runs", "1", "--warmup", "0", "--json"]}


# ---------------------------------------------------------------------------------------------- model files


def _sym(path: str, name: str) -> tuple[int, int]:
    """(file offset, size) of a symbol's bytes in a model.so, found with preflight's ELF reader."""
    def reader(f, p, size):
        return preflight._symbol(preflight._read_elf(f, p, size), p, name)
    return preflight._open_elf(path, reader)


def _doc(path: str) -> dict:
    at, n = _sym(path, "qvit_model_meta")
    with open(path, "rb") as f:
        f.seek(at)
        return json.loads(f.read(n)[:-1].decode())


def fix_checksum(path: str) -> None:
    """Recompute model_sha256 in place (as qvit_compile does after linking)."""
    at, n = preflight.checksum_range(path)
    digest = preflight.compute_checksum(path)
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(digest.encode())


class TooLong(Exception):
    pass


def encode_meta(doc_or_text, size: int) -> bytes:
    """The bytes of a qvit_model_meta symbol of `size` bytes holding this document (JSON, spaces, NUL)."""
    if isinstance(doc_or_text, (bytes, str)):
        text = doc_or_text.encode() if isinstance(doc_or_text, str) else doc_or_text
    else:
        doc = doc_or_text
        text = json.dumps(doc, separators=(",", ":")).encode()
        if len(text) > size - 1 and isinstance(doc, dict):  # make room: optional fields
            doc = {k: v for k, v in doc.items() if k not in ("source_digest", "compiler")}
            text = json.dumps(doc, separators=(",", ":")).encode()
    if len(text) > size - 1:
        raise TooLong(f"{len(text)} bytes do not fit {size - 1}")
    return text + b" " * (size - 1 - len(text)) + b"\0"


def variant(src: str, dst, *, meta=None, symbols=None, at=None, fix: bool = True) -> str:
    """A copy of src with the metadata replaced (a dict or raw JSON text), symbols set ({name: bytes}),
    bytes overwritten (at: {file offset: bytes}); the checksum recomputed when fix."""
    dst = str(dst)
    data = bytearray(open(src, "rb").read())
    if meta is not None:
        off, n = _sym(src, "qvit_model_meta")
        data[off:off + n] = encode_meta(meta, n)
    for name, value in (symbols or {}).items():
        off, n = _sym(src, name)
        assert len(value) == n, (name, n)
        data[off:off + n] = value
    for off, value in (at or {}).items():
        data[off:off + len(value)] = value
    with open(dst, "wb") as f:
        f.write(bytes(data))
    if fix:
        fix_checksum(dst)
    return dst


def _u64(v: int) -> bytes:
    return v.to_bytes(8, "little")


def _i32(v: int) -> bytes:
    return v.to_bytes(4, "little", signed=True)


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """The x86_64 build of a tiny random DeiT and one image for it."""
    pytest.importorskip("tvm", reason="the compile stage (apache-tvm) is not installed")
    from PIL import Image

    from qvit_compile import intmodel
    from qvit_compile.compiler import compile_model

    d = tmp_path_factory.mktemp("validation")
    path = str(d / "deit.so")
    compile_model(intmodel.random_deit(seed=0), "x86_64", path, progress=lambda *a: None)
    img = str(d / "img.png")
    Image.fromarray((np.arange(28 * 28) * 7 % 256).astype(np.uint8).reshape(28, 28), "L").save(img)
    return {"path": path, "image": img, "dir": d}


@pytest.fixture(scope="session")
def tiny_aarch64(tiny):
    from qvit_compile import intmodel
    from qvit_compile.compiler import compile_model

    path = str(tiny["dir"] / "deit_aarch64.so")
    compile_model(intmodel.random_deit(seed=0), "aarch64", path, progress=lambda *a: None)
    return path


def _edge(verb: str, model: str, image: str, timeout: float = TIMEOUT):
    args = [image if a == "IMAGE" else a for a in VERB_ARGS[verb]]
    try:
        return subprocess.run([sys.executable, "-m", "qvit_edge", verb, model, *args], capture_output=True,
                              text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"qvit-edge {verb} {model}: no answer in {timeout} s (hangs)")




# ---------------------------------------------------------------------------------------------- the cases


def _const(doc: dict, biggest: bool = False) -> str:
    consts = [n for n, t in doc["plan"]["tensors"].items() if "offset" in t]
    return max(consts, key=lambda n: model_schema.nbytes(doc["plan"]["tensors"][n])) if biggest else consts[0]


def _first(doc: dict, key: str) -> str:
    return next(n for n, t in doc["plan"]["tensors"].items() if key in t)


def _edit(fn):
    """A case that edits the document (deep copy) and fixes the checksum."""
    def make(src, dst):
        doc = copy.deepcopy(_doc(src))
        fn(doc)
        return variant(src, dst, meta=doc)
    return make


def _set_tensor(key: str, value, which=None):
    """Set `key` of one tensor: which(doc) names it (default: the first tensor that has `key`)."""
    def fn(doc):
        doc["plan"]["tensors"][which(doc) if which else _first(doc, key)][key] = value
    return _edit(fn)


def _past_the_end(doc):
    tensors, blob = doc["plan"]["tensors"], doc["weights_bytes"]
    name = _const(doc, biggest=True)
    n = model_schema.nbytes(tensors[name])
    tensors[name]["offset"] = (blob - n) // 64 * 64 + 64  # aligned, inside the blob, its end past it


def _rename_offset(doc):
    t = doc["plan"]["tensors"][_const(doc)]
    t["offsex"] = t.pop("offset")


def _flip_meta_bit(src, dst):
    """One bit of a letter in the metadata's arch name: still valid JSON, so only the checksum can tell."""
    off, n = _sym(src, "qvit_model_meta")
    meta = open(src, "rb").read()[off:off + n]
    at = meta.index(b'"arch":"') + len(b'"arch":"') + 1  # a lowercase letter: ^ 0x08 stays printable
    return variant(src, dst, at={off + at: bytes([meta[at] ^ 0x08])}, fix=False)


def _flip_in(symbol_or_offset):
    def make(src, dst):
        if isinstance(symbol_or_offset, str):
            off, n = _sym(src, symbol_or_offset)
            off += n // 2
        else:
            off = symbol_or_offset(src)
        b = open(src, "rb").read()[off]
        return variant(src, dst, at={off: bytes([b ^ 0x01])}, fix=False)
    return make


def _text_offset(src):
    """Somewhere in the largest loadable segment (in the tiny model: the kernels' code)."""
    elf = preflight._open_elf(src, preflight._read_elf)
    off, _, filesz, _ = max(elf.loads, key=lambda s: s[2])
    return off + filesz // 3


def _only_checked_symbols(src, dst):
    """A real library that exports only what check_model_file looks for (the real metadata)."""
    off, n = _sym(src, "qvit_model_meta")
    text = open(src, "rb").read()[off:off + n - 1].decode()
    c = ("const int qvit_model_abi = 1;\nconst char qvit_model_meta[] = " + json.dumps(text) + ";\n")
    src_c = f"{dst}.c"
    open(src_c, "w").write(c)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(dst), src_c], check=True, capture_output=True)
    return str(dst)


def _text_edit(src, old: str, new: str) -> str:
    """The metadata JSON text with one substring replaced (room made by dropping source_digest)."""
    doc = _doc(src)
    doc.pop("source_digest")
    text = json.dumps(doc, separators=(",", ":"))
    assert text.count(old) == 1, old
    return text.replace(old, new)


def _fifo(src, dst):
    os.mkfifo(dst)
    return str(dst)


def _deep_json(src, dst):
    _, n = _sym(src, "qvit_model_meta")
    depth = (n - 2) // 2
    return variant(src, dst, meta="[" * depth + "]" * depth)


CASES = {  # name: (make(src, dst) -> path, needles of the one error line)
    # crashes (SIGSEGV) before
    "blob_size_2^40": (lambda s, d: variant(s, d, symbols={"qvit_model_blob_size": _u64(2**40)}),
                       ["qvit_model_blob_size", "larger than qvit_model_blob"]),
    "blob_size_2^40_no_fix": (
        lambda s, d: variant(s, d, symbols={"qvit_model_blob_size": _u64(2**40)}, fix=False),
        ["checksum mismatch"]),
    "const_offset_10^15": (_set_tensor("offset", 10**15), ["corrupt model", "offset", "out of range"]),
    "const_offset_negative": (_set_tensor("offset", -64), ["corrupt model", "offset: -64 out of range"]),
    "step_kernel_999": (_edit(lambda d: d["plan"]["steps"][3].update(kernel=999)),
                        ["corrupt model (plan step 3: kernel 999 out of range 0..16)"]),
    "step_kernel_-1000000": (_edit(lambda d: d["plan"]["steps"][3].update(kernel=-1000000)),
                             ["plan step 3: kernel -1000000 out of range"]),
    "metadata_bit_flip": (_flip_meta_bit, ["checksum mismatch"]),
    "dtype_list": (_edit(lambda d: d["plan"]["tensors"]["image"].update(dtype=[1, 28])), ["dtype [1, 28]"]),
    # hang before
    "fifo": (_fifo, ["FIFO"]),
    "directory": (lambda s, d: (os.mkdir(d), str(d))[1], ["is a directory"]),
    "device": (lambda s, d: "/dev/zero", ["a device"]),
    # tracebacks before
    "blob_size_2^64-1": (lambda s, d: variant(s, d, symbols={"qvit_model_blob_size": _u64(2**64 - 1)}),
                         ["larger than qvit_model_blob"]),
    "only_checked_symbols": (_only_checked_symbols, ["not a qvit-edge model (no qvit_model_blob)"]),
    "metadata_list": (lambda s, d: variant(s, d, meta="[1, 2, 3]"), ["JSON list, not an object"]),
    "metadata_string": (lambda s, d: variant(s, d, meta='"model"'), ["JSON str, not an object"]),
    "metadata_deep": (_deep_json, ["metadata is not JSON"]),
    "metadata_inf": (lambda s, d: variant(s, d, meta=_text_edit(s, '"mean":[0.5]', '"mean":[1e999]')),
                     ["input.mean: inf is not a finite number"]),
    "no_plan": (_edit(lambda d: d.pop("plan")), ["corrupt model (no plan)"]),
    "unknown_step_arg": (_edit(lambda d: d["plan"]["steps"][2]["args"].__setitem__(0, "nope")),
                         ["plan step 2: unknown tensor 'nope'"]),
    "unknown_input": (_edit(lambda d: d["plan"].update(input="nope")), ["plan input: unknown tensor 'nope'"]),
    "unknown_view": (_set_tensor("view", "nope"), ["view of unknown tensor 'nope'"]),
    "dtype_complex64": (_set_tensor("dtype", "complex64", which=lambda d: _const(d)), ["dtype 'complex64'"]),
    "dtype_bogus": (_set_tensor("dtype", "bogus", which=lambda d: _first(d, "arena")), ["dtype 'bogus'"]),
    "arena_huge_shape": (_set_tensor("shape", [65536, 65536, 64], which=lambda d: _first(d, "arena")),
                         ["past the end of the activation limit"]),
    "arena_negative": (_set_tensor("arena", -64), ["arena: -64 out of range"]),
    "classes_int": (_edit(lambda d: d.update(classes=5)), ["classes: 5 is not a list"]),
    "num_classes_str": (_edit(lambda d: d.update(num_classes="abc")),
                        ["num_classes: 'abc' is not an integer"]),
    "input_size_100000^2": (_edit(lambda d: d["input"].update(size=[100000, 100000])),
                            ["input.size: 100000 out of range 1..8192"]),
    # wrongly accepted before
    "const_offset_past_blob_end": (_edit(_past_the_end), ["past the end of the weights blob"]),
    "empty_steps": (_edit(lambda d: d["plan"].update(steps=[])), ["plan steps: 0 entries"]),
    "renamed_offset": (_edit(_rename_offset), ["unknown field 'offsex'"]),
    "abi_2": (lambda s, d: variant(s, d, symbols={"qvit_model_abi": _i32(2)}),
              ["model ABI 2 is not supported"]),
    "num_kernels_999": (lambda s, d: variant(s, d, symbols={"qvit_model_num_kernels": _i32(999)}),
                        ["qvit_model_kernels holds 17 entries, qvit_model_num_kernels says 999"]),
    "elf_phoff_garbage": (lambda s, d: variant(s, d, at={0x20: _u64(2**40)}, fix=False),
                          ["program headers past the end"]),
    "elf_shoff_garbage": (lambda s, d: variant(s, d, at={0x28: _u64(2**40 + 3)}, fix=False),
                          ["section table past the end"]),
    # the checksum covers everything the loader maps
    "weights_bit_flip": (_flip_in("qvit_model_blob"), ["checksum mismatch"]),
    "code_bit_flip": (_flip_in(_text_offset), ["checksum mismatch"]),
    "checksum_digit": (_flip_in(preflight.CHECKSUM_SYMBOL), ["checksum mismatch"]),
    "metadata_not_nul_terminated": (
        lambda s, d: variant(s, d, at={sum(_sym(s, "qvit_model_meta")) - 1: b" "}), ["not NUL-terminated"]),
    # versions
    "format_version_1": (_edit(lambda d: d.update(format_version=1)), ["version 1", "recompile it"]),
    "format_version_3": (_edit(lambda d: d.update(format_version=3)), ["version 3 is not supported"]),
    "requires_not_a_name": (_edit(lambda d: d["target"].update(requires=["avx2", "AVX 512"])),
                            ["target.requires", "not an instruction-set name"]),
    "format_version_true": (_edit(lambda d: d.update(format_version=True)),
                            ["version True is not supported"]),
}


@pytest.fixture(scope="session")
def bad(tiny):
    d = tiny["dir"] / "bad"
    d.mkdir()
    return {name: make(tiny["path"], d / f"{name}.so") for name, (make, _) in CASES.items()}


@pytest.mark.parametrize("verb", ["info", "run", "bench"])
@pytest.mark.parametrize("case", list(CASES))
def test_bad_model_is_one_line_exit_2(bad, tiny, case, verb):
    line = _one_line_error(_edge(verb, bad[case], tiny["image"]), *CASES[case][1])
    assert line.startswith(f"qvit-edge {verb}: error: ") and bad[case] in line


def test_model_load_from_python_raises_model_error(bad):
    """qvit_edge.model.load (no CLI, no open_model) checks the same before loading: a ModelError each."""
    code = textwrap.dedent("""
        import json, sys
        from qvit_edge import model
        out = {}
        for name, path in json.loads(sys.argv[1]).items():
            try:
                model.load(path).close()
                out[name] = "loaded"
            except model.ModelError as e:
                out[name] = "ModelError: " + str(e)
        print(json.dumps(out))
    """)
    r = subprocess.run([sys.executable, "-c", code, json.dumps(bad)], capture_output=True, text=True,
                       timeout=TIMEOUT * 2, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout)
    for name, (_, needles) in CASES.items():
        assert got[name].startswith("ModelError: "), (name, got[name])
        assert all(n in got[name] for n in needles), (name, got[name])


def test_good_model_passes_and_info_says_what_was_verified(tiny):
    r = _edge("info", tiny["path"], tiny["image"])
    assert r.returncode == 0, r.stderr
    assert "(verified)" in r.stdout and "code, metadata, plan and weights" in r.stdout
    d = json.loads(subprocess.run([sys.executable, "-m", "qvit_edge", "info", tiny["path"], "--json"],
                                  capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT).stdout)
    assert d["model_sha256"] == preflight.compute_checksum(tiny["path"])
    assert d["format_version"] == model_schema.FORMAT_VERSION == 2


def test_changed_cpu_in_the_elf_header_is_refused_before_the_loader_aborts(tiny, tiny_aarch64, tmp_path):
    """An aarch64 model.so whose e_machine says x86_64 made ld.so abort (rc 127) and `info` call it
    runnable here."""
    if preflight.host_machine() != "x86_64":
        pytest.skip("the patched file claims x86_64: the check is this machine's on x86_64")
    em = (62).to_bytes(2, "little")
    patched = variant(tiny_aarch64, tmp_path / "a64_as_x86.so", at={18: em}, fix=False)
    for verb in ("info", "run", "bench"):
        _one_line_error(_edge(verb, patched, tiny["image"]),
                        "compiled for aarch64 (metadata) but its ELF header says x86_64")
    # the metadata changed to match, checksum fixed: the relocations still tell
    doc = _doc(tiny_aarch64)
    doc["target"]["arch"] = "x86_64"
    both = variant(tiny_aarch64, tmp_path / "a64_as_x86_meta.so", meta=doc, at={18: em})
    for verb in ("info", "run"):
        _one_line_error(_edge(verb, both, tiny["image"]), "relocation type", "is not one of x86_64's")
    with pytest.raises(preflight.PreflightError, match="relocation type"):
        preflight.check_model_file(both)


def test_a_cpu_without_the_models_instruction_sets_is_refused_before_loading(tiny, tmp_path):
    """The compile stage records the target CPU's instruction sets (target.requires); a CPU that
    lacks one gets one line from run / bench and from model.load (running would die of SIGILL),
    while info still describes the file and says why it does not run here."""
    doc = _doc(tiny["path"])
    assert doc["target"]["requires"] and set(doc["target"]["requires"]) <= preflight.host_isa()
    doc["target"]["requires"] = doc["target"]["requires"] + ["qvit_test_isa"]
    path = variant(tiny["path"], tmp_path / "needs_more.so", meta=doc)
    for verb in ("run", "bench"):
        _one_line_error(_edge(verb, path, tiny["image"]), "whose instructions qvit_test_isa this CPU lacks")
    r = subprocess.run([sys.executable, "-m", "qvit_edge", "info", path, "--json"], capture_output=True,
                       text=True, timeout=TIMEOUT, cwd=ROOT)
    info = json.loads(r.stdout)
    assert r.returncode == 0 and info["runs_here"] is False and info["missing_isa"] == ["qvit_test_isa"]
    assert "this CPU lacks qvit_test_isa" in _edge("info", path, tiny["image"]).stdout
    with pytest.raises(preflight.PreflightError, match="qvit_test_isa"):
        preflight.verify_model_file(path)


def test_aarch64_cpu_features_come_from_the_auxiliary_vector(monkeypatch, tmp_path):
    """HWCAP words (what qemu-user fills in for the emulated CPU) -> Linux's feature names."""
    import struct
    auxv = struct.pack("<QQQQQQ", 16, (1 << 1) | (1 << 20), 26, 1 << 13, 0, 0)
    real_open = open

    def fake_open(p, *a, **k):
        return real_open(tmp_path / "auxv", *a, **k) if p == "/proc/self/auxv" else real_open(p, *a, **k)
    (tmp_path / "auxv").write_bytes(auxv)
    monkeypatch.setattr(preflight, "host_machine", lambda: "aarch64")
    monkeypatch.setattr("builtins.open", fake_open)
    assert preflight.host_isa() == {"asimd", "asimddp", "i8mm"}
    doc = {"target": {"mcpu": "cortex-a76", "requires": ["asimd", "asimddp", "asimdhp"]}}
    assert preflight.missing_isa(doc) == ["asimdhp"]


def test_native_step_loop_refuses_out_of_range_kernels_and_negative_nargs(tiny):
    """qvit_tvm_run's own bounds checks (behind the schema): an error message, no call."""
    from qvit_edge import model as model_so

    with model_so.load(tiny["path"]) as m:
        nat = m._nat
        failed = nat.ffi.new("int32_t *")
        for kernel, nargs, needle in ((999, 2, "kernel index 999 out of range 0..16"),
                                      (-1000000, 2, "kernel index -1000000 out of range"),
                                      (0, -1, "-1 arguments")):
            steps = model_so._ffi.new("qvit_tvm_step[]", 2)
            for field in ("kernel", "nargs", "args"):
                setattr(steps[0], field, getattr(m._steps[0], field))
            steps[1].kernel, steps[1].nargs, steps[1].args = kernel, nargs, m._steps[1].args
            ptr = nat.ffi.cast("void *", int(model_so._ffi.cast("uintptr_t", steps)))
            rc = nat.lib.qvit_tvm_run(m._kernels, m._num_kernels, ptr, 2, nat.ffi.NULL, failed)
            msg = nat.ffi.string(nat.lib.qvit_tvm_last_error()).decode()
            nat.lib.qvit_tvm_clear_error()
            assert rc == -1 and failed[0] == 1 and needle in msg, (rc, failed[0], msg)
        # and through Model.run, should a step change after validation
        m._steps[3].kernel = 999
        with pytest.raises(model_so.ModelError, match=r"step 3 \(.*\) failed: IndexError: kernel index 999"):
            m.run(np.zeros((1, 1, 28, 28), np.float32))


def test_interpolations_are_the_ones_preprocess_knows():
    from qvit_edge import preprocess

    assert set(model_schema.INTERPOLATIONS) == set(preprocess._RESAMPLE)


# ---------------------------------------------------------------------------------------------- leaks

_LEAK = textwrap.dedent("""
    import json, sys
    from qvit_edge import model

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    path, bad, n, n_bad = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

    def cycle():
        model.load(path).close()

    def fail():
        try:
            model.load(bad)
        except model.ModelError:
            pass

    for _ in range(200):  # allocator pools, import-time caches
        cycle(); fail()
    r0 = rss()
    for _ in range(n):
        cycle()
    r1 = rss()
    for _ in range(n_bad):
        fail()
    r2 = rss()
    print(json.dumps({"load_close": r1 - r0, "failed_load": r2 - r1}))
""")


def test_10000_load_close_cycles_keep_rss_flat(tiny, bad):
    """cffi's ffi.dlopen kept every library object (about 13 KB per load/close, 11 KB per failed
    load); 10,000 cycles must now grow RSS by less than 8 MB (0.8 KB per cycle)."""
    r = subprocess.run([sys.executable, "-c", _LEAK, tiny["path"], bad["step_kernel_999"], "10000", "3000"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    grew = json.loads(r.stdout)
    assert grew["load_close"] < 8e6, grew
    assert grew["failed_load"] < 2.4e6, grew


# ---------------------------------------------------------------------------------------------- fuzz

# A warm process that forks one child per case (each child runs the real command line, `qvit-edge
# VERB ...`, and exits with its status): a fresh interpreter per case would cost ~0.3 s.
_WORKER = textwrap.dedent("""
    import json, os, signal, sys, time, traceback
    import numpy
    from qvit_edge import cli, cmd_bench, cmd_info, cmd_run, model, preflight, preprocess

    for line in sys.stdin:
        case = json.loads(line)
        sys.stdout.flush(); sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            rc = 1
            try:
                for fd, name in ((1, case["out"]), (2, case["err"])):
                    os.dup2(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
                rc = cli.main(case["argv"])
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush(); sys.stderr.flush()
                os._exit(rc if isinstance(rc, int) else 1)
        deadline = time.monotonic() + case["timeout"]
        status = None
        while True:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.001)
        if status is None:
            res = {"hang": True}
        elif os.WIFSIGNALED(status):
            res = {"signal": os.WTERMSIG(status)}
        else:
            res = {"rc": os.WEXITSTATUS(status)}
        print(json.dumps(res), flush=True)
""")

_VALUES = [0, -1, 1, 3, 63, 64, 65, 999, 2**31, 2**63, 2**64, -10**15, 10**15, 0.5, 1e308, "", "x", "bogus",
           "complex64", "float64", "image", "logits", None, True, False, [], {}, [1], [0, 0], [1, 1, 28, 28],
           {"a": 1}]


def _paths(v, at=()):
    """Every (container, key) in a JSON document."""
    out = []
    if isinstance(v, dict):
        for k, x in v.items():
            out.append((v, k))
            out += _paths(x)
    elif isinstance(v, list):
        for i, x in enumerate(v):
            out.append((v, i))
            out += _paths(x)
    return out


def _mutate(doc: dict, rng: random.Random, names: list) -> str:
    """One random edit of a field of the metadata or plan; returns what it did."""
    paths = _paths(doc)
    plan_paths = _paths(doc["plan"])
    parent, key = rng.choice(plan_paths if rng.random() < 0.7 else paths)
    old = parent[key]
    r = rng.random()
    if r < 0.15 and isinstance(parent, dict):
        del parent[key]
        return f"del {key!r}"
    if r < 0.25 and isinstance(parent, dict):
        parent[f"{key}x"] = parent.pop(key)
        return f"rename {key!r}"
    if r < 0.35 and isinstance(parent, list):
        if rng.random() < 0.5:
            parent.pop(key)
        else:
            parent.insert(key, copy.deepcopy(old))
        return f"list edit at {key}"
    if r < 0.5 and isinstance(old, str):
        parent[key] = rng.choice(names)
        return f"{key!r}: {old!r} -> another name"
    if r < 0.7 and isinstance(old, int) and not isinstance(old, bool):
        parent[key] = old + rng.choice([-64, -1, 1, 64, 4096, -4096, 2**20])
        return f"{key!r}: {old} nudged"
    parent[key] = rng.choice(_VALUES)
    return f"{key!r}: {str(old)[:20]} -> {parent[key]!r}"


def test_fuzz_metadata_bit_flips_and_field_edits(tiny, tmp_path):
    """200 seeded cases: bit flips in the metadata symbol (and a few anywhere in the file), random field
    edits re-encoded with and without a fixed checksum. Each `info` and `run` must end in exit 0 (for
    an unchanged checksum: with the original answer) or exit 2 with one line; never a signal, a hang
    or a traceback. (An edit with a recomputed checksum is a valid file of another model: its answer
    may differ.)"""
    src = tiny["path"]
    rng = random.Random(20261130)
    meta_off, meta_n = _sym(src, "qvit_model_meta")
    doc0 = _doc(src)
    names = list(doc0["plan"]["tensors"])
    size = os.path.getsize(src)
    base = _edge("run", src, tiny["image"])
    assert base.returncode == 0, base.stderr
    want_top = json.loads(base.stdout)["results"][0]["top"]

    cases = []
    for i in range(200):
        dst = tmp_path / f"fuzz{i}.so"
        kind = rng.random()
        if kind < 0.35:
            off = meta_off + rng.randrange(meta_n) if rng.random() < 0.85 else rng.randrange(size)
            b = open(src, "rb").read()[off]
            variant(src, dst, at={off: bytes([b ^ (1 << rng.randrange(8))])}, fix=False)
            cases.append((str(dst), f"bit flip at {off}", False))
            continue
        fix = kind < 0.8
        for _ in range(20):
            doc = copy.deepcopy(doc0)
            what = _mutate(doc, rng, names)
            try:
                variant(src, dst, meta=doc, fix=fix)
            except TooLong:  # an edit that grew the document past its symbol: another one
                continue
            cases.append((str(dst), f"{what} ({'checksum fixed' if fix else 'checksum unchanged'})", fix))
            break

    worker = subprocess.Popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=ROOT)
    problems = []
    try:
        for i, (path, what, fixed) in enumerate(cases):
            for verb, args in (("info", []), ("run", [tiny["image"], "--json"])):
                out, err = str(tmp_path / f"out{i}{verb}"), str(tmp_path / f"err{i}{verb}")
                worker.stdin.write(json.dumps({"argv": [verb, path, *args], "out": out, "err": err,
                                               "timeout": TIMEOUT}) + "\n")
                worker.stdin.flush()
                reply = worker.stdout.readline()
                assert reply, "the fuzz worker died"
                res = json.loads(reply)
                stderr = open(err).read()
                lines = stderr.strip().splitlines()
                label = f"case {i} {verb} ({what})"
                if res.get("hang") or "signal" in res:
                    problems.append(f"{label}: {res}")
                elif "Traceback" in stderr or res["rc"] not in (0, 2):
                    problems.append(f"{label}: exit {res['rc']}: {stderr[-600:]}")
                elif res["rc"] == 2 and len(lines) != 1:
                    problems.append(f"{label}: {len(lines)} stderr lines: {stderr[-600:]}")
                elif res["rc"] == 0 and verb == "run" and not fixed:
                    top = json.loads(open(out).read())["results"][0]["top"]
                    if top != want_top:
                        problems.append(f"{label}: exit 0 with another answer")
    finally:
        worker.stdin.close()
        worker.wait(timeout=TIMEOUT)
    assert not problems, "\n".join(problems[:20])


def test_elf_reader_survives_garbage_in_every_header(tiny, tmp_path):
    """Seeded: random values in the ELF header, program headers, section headers and dynamic
    section (in-process: reading is plain Python, nothing is loaded). Each file verifies or raises
    PreflightError; any other exception is a traceback at the command line."""
    src = tiny["path"]
    data = open(src, "rb").read()
    phoff, shoff = int.from_bytes(data[0x20:0x28], "little"), int.from_bytes(data[0x28:0x30], "little")
    phnum, shnum = int.from_bytes(data[0x38:0x3A], "little"), int.from_bytes(data[0x3C:0x3E], "little")
    elf = preflight._open_elf(src, preflight._read_elf)
    dyn_off, dyn_n = elf.dynamic
    regions = [(0, 64), (phoff, phnum * 56), (shoff, shnum * 64), (dyn_off, dyn_n)]
    rng = random.Random(7)
    outcomes = {"ok": 0, "refused": 0}
    for i in range(600):
        b = bytearray(data)
        for _ in range(rng.choice((1, 1, 2, 4))):
            lo, n = rng.choice(regions)
            at = lo + rng.randrange(n) // 8 * 8 if rng.random() < 0.5 else lo + rng.randrange(n)
            width = rng.choice((1, 2, 4, 8))
            value = rng.choice((0, 1, 0xFF, 2**15, 2**31 - 1, 2**32 - 1, 2**63, 2**64 - 1, len(data),
                                len(data) - 1, rng.randrange(2**64)))
            b[at:at + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
        path = tmp_path / f"elf{i % 8}.so"
        path.write_bytes(bytes(b))
        for check in (preflight.verify_model_file, preflight.check_model_file, preflight.read_elf):
            try:
                check(str(path))
                outcomes["ok"] += 1
            except preflight.PreflightError as e:
                assert "\n" not in str(e)
                outcomes["refused"] += 1
    assert outcomes["refused"] > 100, outcomes
