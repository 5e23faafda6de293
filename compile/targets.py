"""Compile targets: name -> TVM target, C compiler, default CPU.

aarch64 defaults to the Cortex-A72 (Raspberry Pi 4: NEON, no dot product), which also runs on the
A76 (Pi 5; pass --mcpu cortex-a76). x86_64 defaults to the CPU of the machine compiling (the usual
case: the compiled model runs where it is built); pass --mcpu x86-64-v3 for any AVX2 machine.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass

from qvit_edge.clikit import UserError


@dataclass(frozen=True)
class Target:
    arch: str
    mtriple: str
    mcpu: str
    cc: str  # C compiler that links model.so

    def tvm(self):
        import tvm
        return tvm.target.Target({"kind": "llvm", "mtriple": self.mtriple, "mcpu": self.mcpu})

    def as_meta(self) -> dict:
        return {"arch": self.arch, "mtriple": self.mtriple, "mcpu": self.mcpu}


ARCHS = ("x86_64", "aarch64")


def host_x86_cpu() -> str:
    try:
        from tvm.target import codegen
        cpu = codegen.llvm_get_system_cpu()
        if cpu and cpu != "generic":
            return cpu
    except Exception:  # no usable LLVM host query: a portable AVX2 baseline
        pass
    return "x86-64-v3"


def get(arch: str, mcpu: str | None = None) -> Target:
    if arch == "x86_64":
        t = Target("x86_64", "x86_64-linux-gnu", mcpu or host_x86_cpu(), "gcc")
    elif arch == "aarch64":
        t = Target("aarch64", "aarch64-linux-gnu", mcpu or "cortex-a72", "aarch64-linux-gnu-gcc")
    else:
        raise UserError(f"unknown target {arch!r} (known: {', '.join(ARCHS)})")
    if mcpu is not None:
        from tvm.target import codegen
        if not codegen.llvm_is_valid_cpu(mcpu, t.mtriple):
            raise UserError(f"unknown CPU {mcpu!r} for target {arch}")
    return t


def check_compiler(t: Target) -> str:
    path = shutil.which(t.cc)
    if path is None:
        hint = ""
        if t.arch == "aarch64":
            hint = " (Debian: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross)"
        raise UserError(f"C compiler {t.cc!r} for target {t.arch} not found{hint}")
    return path
