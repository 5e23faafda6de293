"""Cycles per execution of a block of machine code, from llvm-mca (for pi_estimate).

A block's raw instruction bytes are disassembled with llvm-mc, then llvm-mca simulates the block
repeated (-iterations) on a core's scheduling model: cycles per execution = Total Cycles / Iterations,
i.e. the block's steady-state cost with every load hitting the L1 cache and every branch predicted.
Many blocks go to one llvm-mca run as separate code regions. Results are cached per (core model,
instruction text) in build/pi-estimate/mca-cache.json, so later estimates only analyse new blocks.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor

from qvit_edge.clikit import UserError

LLVM_MC = "llvm-mc-19"
LLVM_MCA = "llvm-mca-19"
ITERATIONS = 100
BATCH = 300  # code regions per llvm-mca run
_WARN_LINE = re.compile(r"^<stdin>:(\d+):\d+: warning")


def tools() -> tuple:
    found = [shutil.which(t) for t in (LLVM_MC, LLVM_MCA)]
    if None in found:
        raise UserError(f"{LLVM_MCA} / {LLVM_MC} not found (make system-deps installs them; Debian: "
                        f"apt-get install llvm-19)")
    return tuple(found)


def version() -> str:
    r = subprocess.run([tools()[1], "--version"], capture_output=True, text=True)
    m = re.search(r"LLVM version (\S+)", r.stdout)
    return m.group(1) if m else "?"


def disassemble(insns, triple: str, mcpu: str | None) -> dict:
    """{instruction hex (memory order): assembly text or None (not decodable)}."""
    insns = sorted(set(insns))
    if not insns:
        return {}
    mc = tools()[0]
    text = "".join("[" + " ".join("0x" + h[i:i + 2] for i in range(0, len(h), 2)) + "]\n" for h in insns)
    cmd = [mc, "--disassemble", f"-triple={triple}"] + ([f"-mcpu={mcpu}"] if mcpu else [])
    r = subprocess.run(cmd, input=text, capture_output=True, text=True)
    bad = {int(m.group(1)) - 1 for m in map(_WARN_LINE.match, r.stderr.splitlines()) if m}
    out = [ln.strip() for ln in r.stdout.splitlines() if ln.strip() and ln.strip() != ".text"]
    good = [h for k, h in enumerate(insns) if k not in bad]
    if len(out) != len(good):
        raise UserError(f"{LLVM_MC} returned {len(out)} instructions for {len(good)}: cannot align them")
    res = dict.fromkeys(insns)
    res.update(zip(good, out))
    return res


def _run_mca(regions: list, triple: str, mcpu: str) -> list:
    """[asm lines] per region -> cycles per execution of each region."""
    mca = tools()[1]
    with tempfile.NamedTemporaryFile("w", suffix=".s", delete=False) as f:
        for k, lines in enumerate(regions):
            f.write(f"# LLVM-MCA-BEGIN r{k}\n" + "".join(f"\t{ln}\n" for ln in lines) + "# LLVM-MCA-END\n")
        src = f.name
    try:
        # call latency 1: a call's callee is counted in its own blocks, not as llvm-mca's 100-cycle guess;
        # unsupported instructions (system registers, supervisor calls) are skipped
        r = subprocess.run([mca, f"-mtriple={triple}", f"-mcpu={mcpu}", f"-iterations={ITERATIONS}", "-json",
                            "-instruction-info=false", "-resource-pressure=false", "--call-latency=1",
                            "--skip-unsupported-instructions=any", src], capture_output=True, text=True)
    finally:
        os.remove(src)
    if r.returncode != 0:
        line = next((ln for ln in r.stderr.splitlines() if "error" in ln), r.stderr.strip()[:200])
        raise UserError(f"{LLVM_MCA} -mcpu={mcpu} failed: {line}")
    doc = json.loads(r.stdout)
    got = {reg["Name"]: reg["SummaryView"] for reg in doc.get("CodeRegions", [])}
    out = []
    for k, lines in enumerate(regions):
        s = got.get(f"r{k}")
        out.append(s["TotalCycles"] / s["Iterations"] if s and s.get("Iterations") else float(len(lines)))
    return out


class Analyzer:
    """Cycles per execution of blocks for one (triple, llvm-mca CPU), with the on-disk cache."""

    def __init__(self, triple: str, mcpu: str, cache_path: str | None, disasm_cpu: str | None = None):
        self.triple, self.mcpu, self.disasm_cpu = triple, mcpu, disasm_cpu
        self.cache_path = cache_path
        self.key = f"{triple}|{mcpu}|{version()}|{ITERATIONS}"
        self.cache = self._load()
        self.undecodable = 0  # distinct instructions llvm-mc could not decode (left out of their blocks)

    def _load(self) -> dict:
        if not self.cache_path or not os.path.exists(self.cache_path):
            return {}
        try:
            with open(self.cache_path) as f:
                return json.load(f).get(self.key, {})
        except (OSError, ValueError):
            return {}

    def _save(self) -> None:
        if not self.cache_path:
            return
        os.makedirs(os.path.dirname(self.cache_path), exist_ok=True)
        try:
            with open(self.cache_path) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            doc = {}
        doc.setdefault(self.key, {}).update(self.cache)
        tmp = f"{self.cache_path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, self.cache_path)

    def cycles(self, blocks: list) -> list:
        """blocks: [tuple of instruction hex] -> cycles per execution of each."""
        asm = disassemble([h for b in blocks for h in b], self.triple, self.disasm_cpu)
        self.undecodable = sum(1 for v in asm.values() if v is None)
        texts = [[asm[h] for h in b if asm[h] is not None] for b in blocks]
        keys = [hashlib.sha1("\n".join(t).encode()).hexdigest() for t in texts]
        todo = sorted({k: t for k, t in zip(keys, texts) if k not in self.cache and t}.items())
        batches = [todo[i:i + BATCH] for i in range(0, len(todo), BATCH)]
        workers = max(1, min(len(batches), (os.cpu_count() or 1)))
        def run(batch):
            return _run_mca([t for _, t in batch], self.triple, self.mcpu)

        with ThreadPoolExecutor(workers) as pool:
            for batch, res in zip(batches, pool.map(run, batches)):
                self.cache.update({k: c for (k, _), c in zip(batch, res)})
        if todo:
            self._save()
        return [self.cache.get(k, 0.0) if t else 0.0 for k, t in zip(keys, texts)]
