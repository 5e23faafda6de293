# Only job: build the native library (cffi, API mode; C in ../native) as qvit_edge._native when
# the qvit-edge distribution is built or installed. All package metadata lives in pyproject.toml.
import importlib.util
import os
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def _compiler_error():
    # The one definition, in the runtime's stdlib-only CLI toolkit (not importable yet: we are
    # building it).
    spec = importlib.util.spec_from_file_location("_clikit", os.path.join(HERE, "clikit.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod.compiler_error


class OneLineErrorBuildExt(build_ext):
    """A failed C build ends with the compiler's first real error line and the file, not with
    the compiler's last line or setuptools' generic 'command gcc failed'."""

    def build_extension(self, ext):
        from distutils.errors import CompileError

        def run(cmd, **_):
            r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
            sys.stderr.write(r.stdout + r.stderr)  # the full log stays for pip -v
            if r.returncode != 0:
                raise CompileError(f"building the native kernels ({ext.name}) with {cmd[0]} failed: "
                                   f"{_compiler_error()(r.stdout + r.stderr)} "
                                   "(a C compiler and the Python headers are needed: Debian: "
                                   "apt-get install gcc python3-dev)")

        # Newer setuptools runs the compiler through `call`, older through `spawn`.
        self.compiler.call = self.compiler.spawn = run
        super().build_extension(ext)


class BuildPyWithoutSetup(build_py):
    """This folder is both the project and the qvit_edge package: its setup.py is no module of
    the package, so the wheel leaves it out."""

    def find_package_modules(self, package, package_dir):
        return [m for m in super().find_package_modules(package, package_dir) if m[1] != "setup"]


setup(
    cffi_modules=["../native/build_ffi.py:ffibuilder"],
    cmdclass={"build_ext": OneLineErrorBuildExt, "build_py": BuildPyWithoutSetup},
    # The extension uses only the stable ABI (cffi builds it with Py_LIMITED_API): one wheel per
    # CPU architecture serves CPython 3.9 and every later version.
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
