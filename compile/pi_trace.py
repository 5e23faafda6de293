"""Count one inference of a model.so under qemu-user, block by block (for pi_estimate).

The counting is done by a TCG plugin (native/tools/tb_count.c, built here with the host gcc when
missing or older than its source) inside the emulated device runtime: compile/pi_estimate_guest.py
run by the aarch64 Python of scripts/aarch64-python.sh, or by this machine's own Python under
qemu-x86_64 for a host model (calibration). Counts are exact: every execution of every translation
block, split by plan step (the plugin starts a new phase whenever a kernel's first block runs).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

from qvit_edge.clikit import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN_SRC = os.path.join(ROOT, "native", "tools", "tb_count.c")
TOOLS_DIR = os.path.join(ROOT, "build", "tools")
GUEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pi_estimate_guest.py")


@dataclass
class Trace:
    """One counted inference. counts: (phase, block id, vcpu, executions); phase k >= 1 is plan step
    k-1, phase 0 what ran between the start mark and the first step."""
    blocks: dict  # block id -> (vaddr, tuple of instruction hex strings)
    counts: list
    phases: int
    side: dict  # what the guest wrote: steps, kernel addresses, memory map, threads
    arch: str
    threads: int
    extra: dict = field(default_factory=dict)


def build_tool(name: str, shared: bool = True) -> str:
    """native/tools/NAME.c -> build/tools/NAME.so (or the program NAME) with the host gcc, when missing
    or older than its source (make install builds them too, the same way)."""
    src = os.path.join(ROOT, "native", "tools", name + ".c")
    out = os.path.join(TOOLS_DIR, name + (".so" if shared else ""))
    if not os.path.exists(src):
        raise UserError(f"{src} is missing: pi-estimate runs from a qvit-edge source checkout")
    if os.path.exists(out) and os.path.getmtime(out) >= os.path.getmtime(src):
        return out
    if shutil.which("gcc") is None:
        raise UserError(f"no host C compiler to build native/tools/{name}.c: apt-get install gcc libc6-dev")
    os.makedirs(TOOLS_DIR, exist_ok=True)
    tmp = f"{out}.{os.getpid()}.tmp"
    flags = ["-shared", "-fPIC", "-fvisibility=hidden"] if shared else []
    r = subprocess.run(["gcc", "-O2", *flags, "-o", tmp, src, "-lpthread"], capture_output=True, text=True)
    if r.returncode != 0:
        line = next((ln for ln in r.stderr.splitlines() if "error" in ln), r.stderr.strip()[:200])
        raise UserError(f"building native/tools/{name}.c failed: {line}")
    os.replace(tmp, out)
    return out


def _need(tool: str, pkg: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise UserError(f"{tool} not found (make system-deps installs it; Debian: apt-get install {pkg})")
    return path


def need_qemu(arch: str) -> str:
    return _need(f"qemu-{arch}", "qemu-user")


def guest_command(arch: str) -> list:
    """The interpreter line that runs the device runtime under qemu-user for `arch`."""
    if arch == "aarch64":
        need_qemu(arch)
        r = subprocess.run(["bash", os.path.join(ROOT, "scripts", "aarch64-python.sh")],
                           capture_output=True, text=True)
        if r.returncode != 0:
            tail = (r.stderr.strip().splitlines() or ["failed"])[-1]
            raise UserError(f"scripts/aarch64-python.sh: {tail}")
        return [r.stdout.strip().splitlines()[-1]]
    if arch == "x86_64":
        # this machine's Python (with qvit_edge installed) emulated; -cpu max: AVX2 (no AVX-512 in
        # QEMU 7.2, so a host model for calibration is built for x86-64-v3)
        return [need_qemu(arch), "-cpu", "max", sys.executable]
    raise UserError(f"no qemu-user guest for {arch}")


def parse_counts(path: str):
    blocks, counts, phases = {}, [], None
    with open(path) as f:
        for line in f:
            tag = line[:1]
            if tag == "C":
                _, p, i, v, n = line.split()
                counts.append((int(p), int(i), int(v), int(n)))
            elif tag == "T":
                _, i, vaddr, *insns = line.split()
                blocks[int(i)] = (int(vaddr, 16), tuple(insns[0].split(",")) if insns else ())
            elif tag == "E":
                phases = int(line.split()[1])
            elif tag == "X":
                raise UserError(f"{path}: the guest never stopped counting (it failed mid-run)")
    if phases is None:
        raise UserError(f"{path}: incomplete block counts (the emulated run did not finish)")
    return blocks, counts, phases


def count_inference(arch: str, model: str, threads: int, workdir: str, timeout: float = 3600) -> Trace:
    """Runs one inference of `model` (a model.so for `arch`) with `threads` pool threads under qemu
    with the plugin; returns the counts. threads == 1: inline counters; else one count per guest
    thread (vCPU 0 = the main thread, which runs task 0 of every parallel loop)."""
    plugin = build_tool("tb_count")
    cmd = guest_command(arch)
    os.makedirs(workdir, exist_ok=True)
    cnt = os.path.join(workdir, f"counts.t{threads}.txt")
    side = os.path.join(workdir, f"side.t{threads}.json")
    for p in (cnt, side):
        if os.path.exists(p):
            os.remove(p)
    mode = "inline" if threads == 1 else "vcpu"
    env = dict(os.environ, QEMU_PLUGIN=f"{plugin},out={cnt},mode={mode}", QVIT_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    if arch == "aarch64":
        env["QEMU_CPU"] = "max"  # a Pi 5 model uses the dot product instructions
    try:
        r = subprocess.run(cmd + [GUEST, os.path.abspath(model), str(threads), side], env=env,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise UserError(f"the emulated inference took over {timeout:.0f} s") from None
    if r.returncode != 0:
        lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        raise UserError(f"the emulated inference failed: {lines[-1] if lines else f'exit {r.returncode}'}")
    blocks, counts, phases = parse_counts(cnt)
    with open(side) as f:
        doc = json.load(f)
    if phases != len(doc["steps"]) + 1:
        raise UserError(f"counted {phases - 1} step starts for a plan of {len(doc['steps'])} steps")
    return Trace(blocks=blocks, counts=counts, phases=phases, side=doc, arch=arch, threads=threads)
