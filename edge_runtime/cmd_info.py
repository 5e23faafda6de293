"""`qvit-edge info model.so [--json]`: what a model.so holds, read from the file without loading it.

No code in the model runs, so it also inspects models built for another CPU (an aarch64
model.so on the x86_64 build machine) and still checks all a load would check first: the ELF
structure, the format version, the checksum over code, metadata, plan and weights, and the
schema of the metadata and plan (qvit_edge.preflight.verify_model_file). JSON schema: docs/runtime.md.
"""
from __future__ import annotations

import json

from qvit_edge.preflight import host_machine, missing_isa, verify_model_file

SCHEMA = "qvit-edge.info/1"


def add_arguments(p):
    p.add_argument("model", help="a model.so written by `make compile`")
    p.add_argument("--json", action="store_true", help="print one JSON object (docs/runtime.md)")


def describe(path: str) -> dict:
    """The info JSON object for a model file (raises PreflightError)."""
    verified = verify_model_file(path, machine="any")  # every check but the CPU one
    info = verified.elf
    doc = {k: v for k, v in verified.doc.items() if k != "plan"}
    keys = ("format", "format_version", "arch", "family", "bits", "target", "gemm", "input", "num_classes",
            "classes", "weights_sha256")
    missing = missing_isa(doc) if info.machine == host_machine() else []
    out = {"schema": SCHEMA, "path": path, "size_bytes": info.size, "machine": info.machine,
           "runs_here": info.machine == host_machine() and not missing, "missing_isa": missing}
    out.update({k: doc.get(k) for k in keys})
    out["model_sha256"] = verified.sha256
    out["extra"] = {k: v for k, v in doc.items() if k not in keys}
    return out


def _gemm(g) -> str:
    """The GEMM engines per layer kind (compile/engines.py), or what files from before them were."""
    if not g:
        return "not recorded (compiled before the engines were: bitserial for <= 4-bit layers)"
    rows = [f"{r['kind']} W{r['w_bits']}A{r['a_bits']}: {r['engine']} "
            f"({r['layers']} layer{'' if r['layers'] == 1 else 's'})" for r in g.get("layers", [])]
    how = ", forced" if g.get("forced") else ", measured on the build machine" if g.get("measured") else ""
    return ", ".join(rows) + f" [mcpu {g['mcpu']}{how}]"


def _fmt(v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def run(args) -> int:
    d = describe(args.model)
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    classes = d["classes"] or []
    shown = ", ".join(classes[:10]) + (f", ... ({len(classes)} in all)" if len(classes) > 10 else "")
    if d["runs_here"]:
        here = "yes"
    elif d["missing_isa"]:
        here = f"no (this CPU lacks {', '.join(d['missing_isa'])})"
    else:
        here = f"no (this machine is {host_machine()})"
    rows = [
        ("model", d["path"]),
        ("size", f"{d['size_bytes'] / 1e6:.2f} MB"),
        ("format", f"{d['format']} v{d['format_version']}"),
        ("architecture", f"{d['arch']} ({d['family']})"),
        ("bits", _fmt(d["bits"])),
        ("target", _fmt(d["target"])),
        ("gemm engines", _gemm(d["gemm"])),
        ("built for", f"{d['machine']}; runs here: {here}"),
        ("input", _fmt(d["input"])),
        ("classes", f"{d['num_classes']}: {shown}"),
        ("weights sha256", d["weights_sha256"]),
        # "verified": the checksum over everything the loader maps held, not only the weights'
        ("checksum", f"sha256 {d['model_sha256']} of code, metadata, plan and weights (verified)"),
    ]
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")
    return 0
