"""qvit_edge.preflight on real ELF files (native and aarch64 builds, objects, executables) and others."""
import shutil
import subprocess
import zipfile

import pytest

from qvit_edge.clikit import UserError
from qvit_edge.preflight import PreflightError, check_model_file, host_machine, read_elf

# A library that exports what a model.so exports (by name only: preflight never runs it).
MODEL_C = (b"const int qvit_model_abi = 1;\nconst char qvit_model_meta[] = \"{}\";\n"
           b"int helper(void) { return 1; }\n")
OTHER_C = b"int just_a_library(int x) { return x + 1; }\n"
MAIN_C = b"int main(void) { return 0; }\n"


def _cc(compiler, src, out, *flags):
    src.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([compiler, *flags, "-o", str(out), "-x", "c", "-"], input=src.read_bytes(), check=True,
                   capture_output=True)
    return str(out)


@pytest.fixture(scope="module")
def elves(tmp_path_factory):
    d = tmp_path_factory.mktemp("elves")
    (d / "model.c").write_bytes(MODEL_C)
    (d / "other.c").write_bytes(OTHER_C)
    (d / "main.c").write_bytes(MAIN_C)
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no host C compiler")
    out = {
        "model": _cc(cc, d / "model.c", d / "model.so", "-shared", "-fPIC"),
        "other": _cc(cc, d / "other.c", d / "other.so", "-shared", "-fPIC"),
        "object": _cc(cc, d / "model.c", d / "model.o", "-c"),
        "exec": _cc(cc, d / "main.c", d / "exe", "-no-pie"),
    }
    if shutil.which("aarch64-linux-gnu-gcc"):
        out["model_aarch64"] = _cc("aarch64-linux-gnu-gcc", d / "model.c", d / "model_a64.so",
                                   "-shared", "-fPIC")
    model = (d / "model.so").read_bytes()

    def patched(name, offset, value):
        b = bytearray(model)
        b[offset:offset + len(value)] = value
        (d / name).write_bytes(bytes(b))
        out[name] = str(d / name)

    patched("elf32", 4, b"\x01")
    patched("big_endian", 5, b"\x02")
    patched("riscv", 18, (243).to_bytes(2, "little"))
    (d / "truncated_header").write_bytes(model[:40])
    out["truncated_header"] = str(d / "truncated_header")
    (d / "truncated").write_bytes(model[: len(model) // 3])
    out["truncated"] = str(d / "truncated")
    (d / "empty.so").write_bytes(b"")
    out["empty"] = str(d / "empty.so")
    (d / "text.so").write_text("not a library\n")
    out["text"] = str(d / "text.so")
    (d / "model.qvit.safetensors").write_bytes((20).to_bytes(8, "little") + b'{"__metadata__":{}} ')
    out["safetensors"] = str(d / "model.qvit.safetensors")
    with zipfile.ZipFile(d / "checkpoint.pt", "w") as z:
        z.writestr("archive/data.pkl", b"x")
    out["zip"] = str(d / "checkpoint.pt")
    out["missing"] = str(d / "nope.so")
    out["dir"] = str(d)
    return out


def test_host_model_passes_and_symbols_are_read(elves):
    info = check_model_file(elves["model"])
    assert info.machine == host_machine()
    assert {"qvit_model_abi", "qvit_model_meta", "helper"} <= info.symbols
    assert "just_a_library" in read_elf(elves["other"]).symbols


def test_aarch64_model_is_refused_here_and_accepted_for_aarch64(elves):
    if "model_aarch64" not in elves:
        pytest.skip("aarch64-linux-gnu-gcc not installed")
    if host_machine() == "aarch64":
        pytest.skip("this machine is aarch64")
    with pytest.raises(PreflightError, match=rf"built for aarch64, this machine is {host_machine()}"):
        check_model_file(elves["model_aarch64"])
    assert check_model_file(elves["model_aarch64"], machine="aarch64").machine == "aarch64"


def test_a_32bit_os_gets_told_to_install_a_64bit_one(elves):
    if "model_aarch64" not in elves:
        pytest.skip("aarch64-linux-gnu-gcc not installed")
    with pytest.raises(PreflightError, match="64-bit OS"):
        check_model_file(elves["model_aarch64"], machine="arm (32-bit)")


@pytest.mark.parametrize("kind,needle", [
    ("other", "not a qvit-edge model"),
    ("object", "relocatable object file"),
    ("exec", "an executable"),
    ("elf32", "32-bit ELF"),
    ("big_endian", "big-endian"),
    ("riscv", "built for riscv"),
    ("truncated_header", "truncated ELF header"),
    ("truncated", "truncated or corrupt"),
    ("empty", "empty file"),
    ("text", "no ELF header"),
    ("safetensors", "make compile"),
    ("zip", "checkpoint"),
    ("missing", "no such file"),
    ("dir", "is a directory"),
])
def test_bad_model_files_give_one_line_errors(elves, kind, needle):
    with pytest.raises(PreflightError) as e:
        check_model_file(elves[kind])
    msg = str(e.value)
    assert needle in msg and elves[kind] in msg and "\n" not in msg
    assert isinstance(e.value, UserError)


@pytest.mark.parametrize("uname,maxsize,want", [
    ("aarch64", 2**63 - 1, "aarch64"), ("aarch64", 2**31 - 1, "arm (32-bit)"),  # 32-bit Pi OS, 64-bit kernel
    ("armv7l", 2**31 - 1, "arm (32-bit)"), ("x86_64", 2**63 - 1, "x86_64"), ("AMD64", 2**63 - 1, "x86_64"),
])
def test_host_machine_is_what_this_python_can_load(monkeypatch, uname, maxsize, want):
    import qvit_edge.preflight as pf

    monkeypatch.setattr(pf.platform, "machine", lambda: uname)
    monkeypatch.setattr(pf.sys, "maxsize", maxsize)
    assert pf.host_machine() == want
