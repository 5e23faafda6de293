"""A fresh machine's set-up fails loudly: scripts/install-system-deps.sh checks capabilities (not
package names), compiler failures name the compiler's first real error, and under CI=true a test
whose tool is missing fails instead of skipping."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from qvit_edge.clikit import compiler_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "install-system-deps.sh")

# What gcc-aarch64-linux-gnu says without libc6-dev-arm64-cross.
NO_LIBC_HEADERS = """\
In file included from /usr/lib/gcc-cross/aarch64-linux-gnu/12/include/stdint.h:9,
                 from attention.c:3:
/usr/aarch64-linux-gnu/include/stdint.h:26:10: fatal error: bits/libc-header-start.h: \
No such file or directory
   26 | #include <bits/libc-header-start.h>
      |          ^~~~~~~~~~~~~~~~~~~~~~~~~~
compilation terminated.
"""


def path_without(tmp_path, *hidden: str, stubs: dict[str, str] | None = None) -> str:
    """A PATH holding links to every program on the current PATH except `hidden`, plus `stubs`
    (name -> shell script body): a machine on which those tools are missing or replaced."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for d in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            src = os.path.join(d, name)
            dst = bindir / name
            if name in hidden or dst.exists() or not os.access(src, os.X_OK) or os.path.isdir(src):
                continue
            dst.symlink_to(src)
    for name, body in (stubs or {}).items():
        p = bindir / name
        if p.is_symlink() or p.exists():
            p.unlink()
        p.write_text("#!/bin/sh\n" + body + "\n")
        p.chmod(0o755)
    return str(bindir)


ALL_INSTALLED = {"dpkg-query": "echo 'install ok installed'"}


def run_script(path: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PATH": path})


def one_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_compiler_error_is_the_first_real_error_line():
    first = compiler_error(NO_LIBC_HEADERS)
    assert first.startswith("/usr/aarch64-linux-gnu/include/stdint.h:26:10: fatal error: bits/libc-header")
    link = "/usr/bin/ld: x.o: in function `f':\nx.c:(.text+0x5): undefined reference to `g'\n" \
           "collect2: error: ld returned 1 exit status\n"
    assert "undefined reference to `g'" in compiler_error(link)
    assert compiler_error("something odd\nlast words\n") == "last words"
    assert compiler_error("") == "no output from the compiler"


def test_this_machine_has_every_capability():
    r = run_script(os.environ["PATH"], "--check")
    assert r.returncode == 0, r.stderr


def test_missing_qemu_is_named_with_its_package(tmp_path):
    line = one_line(run_script(path_without(tmp_path, "qemu-aarch64", stubs=ALL_INSTALLED), "--check"))
    assert "qemu-aarch64" in line and "apt-get install qemu-user" in line


def test_cross_gcc_without_libc_headers_is_caught_by_compiling(tmp_path):
    fake_gcc = f"cat >&2 <<'EOF'\n{NO_LIBC_HEADERS}EOF\nexit 1"
    path = path_without(tmp_path, stubs={**ALL_INSTALLED, "aarch64-linux-gnu-gcc": fake_gcc})
    line = one_line(run_script(path, "--check"))
    assert "fatal error: bits/libc-header-start.h" in line and "libc6-dev-arm64-cross" in line


def test_missing_package_without_root_says_how_to_install(tmp_path):
    stubs = {"dpkg-query": "case \"$*\" in *qemu-user*) echo 'deinstall ok config-files';; "
                           "*) echo 'install ok installed';; esac",
             "id": "echo 1000"}
    line = one_line(run_script(path_without(tmp_path, "sudo", stubs=stubs)))
    assert "root" in line and "apt-get install qemu-user" in line


def test_compile_stage_reports_the_first_compiler_error(tmp_path):
    from qvit_compile.package import MODEL_KERNELS, compile_model_kernel
    from qvit_compile.targets import get as get_target
    from qvit_edge.clikit import UserError

    cc = tmp_path / "aarch64-linux-gnu-gcc"
    cc.write_text(f"#!/bin/sh\ncat >&2 <<'EOF'\n{NO_LIBC_HEADERS}EOF\nexit 1\n")
    cc.chmod(0o755)
    with pytest.raises(UserError) as e:
        compile_model_kernel(str(cc), get_target("aarch64"), MODEL_KERNELS[0], str(tmp_path))
    msg = str(e.value)
    assert os.path.basename(MODEL_KERNELS[0]) in msg and "fatal error: bits/libc-header-start.h" in msg
    assert "libc6-dev-arm64-cross" in msg and "compilation terminated" not in msg


SKIPPING_TEST = """
import pytest

def test_needs_a_tool():
    pytest.skip("frobnicator not installed (make system-deps installs it)")

@pytest.mark.device
def test_on_a_board():
    pytest.skip("needs a real board")

@pytest.mark.cpu_feature
def test_amx_tiles():
    pytest.skip("this CPU has no AMX-INT8")

@pytest.mark.cpu_feature
def test_amx_tiles_but_the_compiler_is_missing():
    pytest.skip("needs gcc")
"""


@pytest.mark.parametrize("ci", ["", "true"])
def test_under_ci_a_skip_for_a_missing_tool_fails(tmp_path, ci):
    (tmp_path / "test_tool.py").write_text(SKIPPING_TEST)
    env = {**os.environ, "CI": ci, "PYTHONPATH": os.path.join(ROOT, "tests")}
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-q",
                        "-rfs", str(tmp_path / "test_tool.py")], capture_output=True, text=True, cwd=tmp_path,
                       env=env, timeout=120)
    if ci:  # a CPU-feature test may skip because the CPU lacks it, for no other reason
        assert r.returncode == 1, r.stdout
        assert "2 failed, 2 skipped" in r.stdout
        assert "CI=true: a skip is a failure here" in r.stdout and "frobnicator not installed" in r.stdout
        assert "FAILED test_tool.py::test_amx_tiles_but_the_compiler_is_missing" in r.stdout
    else:
        assert r.returncode == 0, r.stdout
        assert "4 skipped" in r.stdout


@pytest.mark.qemu
def test_under_ci_the_qemu_test_fails_when_qemu_is_missing(tmp_path):
    env = {**os.environ, "CI": "true", "PATH": path_without(tmp_path, "qemu-aarch64")}
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                        "tests/test_kernels_native.py::test_native_kernels_aarch64_under_qemu"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 1, r.stdout
    assert "qemu-aarch64 not installed" in r.stdout and "1 failed" in r.stdout


def test_cli_main_honours_its_argv(monkeypatch, capsys, tmp_path):
    """Verb arguments come from main()'s argv, not from sys.argv."""
    from qvit_edge.cli import main

    monkeypatch.setattr(sys, "argv", ["pytest"])
    missing = str(tmp_path / "nope.so")
    assert main(["info", missing]) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments" not in err
    assert err.startswith("qvit-edge info: error:") and "nope.so" in err
    with pytest.raises(SystemExit) as e:
        main(["run", "--help"])
    assert e.value.code == 0
    assert "--topk" in capsys.readouterr().out
    assert main(["bench", missing, "--runs", "3"]) == 2


def test_qvit_main_honours_its_argv(monkeypatch, capsys):
    from qvit.cli import main

    monkeypatch.setattr(sys, "argv", ["pytest"])
    assert main(["ops", "--model", "deit_tiny_patch16_224", "--bits", "2"]) == 0
    assert "speed-up" in capsys.readouterr().out.lower()


def test_native_build_failure_ends_with_the_first_compiler_error(tmp_path):
    """`pip install ./edge_runtime` (the runtime from source) on a board whose compiler cannot
    build: the last words name the error."""
    cc = tmp_path / "gcc"
    cc.write_text(f"#!/bin/sh\ncat >&2 <<'EOF'\n{NO_LIBC_HEADERS}EOF\nexit 1\n")
    cc.chmod(0o755)
    # a clean copy, as a checkout is: no objects of an earlier build that would skip the compiler
    src = tmp_path / "src"
    skip = shutil.ignore_patterns("build", "*.so", "*.o", "__pycache__", "*.egg-info")
    for d in ("edge_runtime", "native"):
        shutil.copytree(os.path.join(ROOT, d), src / d, ignore=skip)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path / "wheels"), str(src / "edge_runtime")], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "CC": str(cc)}, cwd=tmp_path)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "error: building the native kernels (qvit_edge._native)" in out, out[-3000:]
    line = next(ln for ln in out.splitlines() if "error: building the native kernels" in ln)
    assert "fatal error: bits/libc-header-start.h" in line and "apt-get install gcc python3-dev" in line
