"""The compile stage as a function: integer model -> model.so for one target."""
from __future__ import annotations

import time

from . import __version__, engines, lower, memory, package, targets


def model_meta(model) -> dict:
    c = model.config
    return {
        "arch": c["arch"], "family": c["family"], "bits": dict(c["bits"]), "input": dict(c["input"]),
        "num_classes": int(c["num_classes"]),
        "classes": list(c.get("classes") or [str(i) for i in range(int(c["num_classes"]))]),
        "irm": bool(c.get("irm", False)), "source_digest": model.digest(),
        "compiler": f"qvit_compile {__version__}",
    }


def compile_model(model, arch: str, out_path: str, mcpu: str | None = None, progress=print,
                  keep_intermediates: bool = False, engine: str | None = None) -> dict:
    """Lower, build with TVM and link `out_path`. Returns the model.so metadata.
    keep_intermediates: every activation gets its own memory (for layer-by-layer checks) instead
    of the shared arena. engine: force one GEMM engine for the <= 4-bit linear layers, or "measure"
    (time the candidates on this machine; engines.py; default: $QVIT_GEMM_ENGINE, else the table's
    choice for the target CPU)."""
    t = targets.get(arch, mcpu)
    targets.check_compiler(t)
    select = engines.Selection(t, engine, progress)
    t0 = time.time()
    bits = model.config["bits"]
    progress(f"qvit_compile: {model.config['arch']} W{bits['weight']}A{bits['act']} -> {out_path} ({arch})")
    plan = lower.lower(model, arch, select)
    arena = 0 if keep_intermediates else memory.plan_arena(plan.tensors, plan.steps)
    progress(f"  lowered: {len(plan.steps)} steps, {len(plan.kernels)} distinct kernels, "
             f"activation arena {arena / 1e6:.1f} MB" if arena else
             f"  lowered: {len(plan.steps)} steps, {len(plan.kernels)} distinct kernels")
    gemm = select.meta()
    progress("  GEMM engines: " + engines.describe(gemm))
    meta = package.build(plan, {**model_meta(model), "gemm": gemm}, t, out_path, progress)
    progress(f"  done in {time.time() - t0:.1f} s")
    return meta
