"""Counted blocks -> estimated cycles per op kind (for pi_estimate).

Every count (phase, block, vCPU, executions) gets a label: the op kind of its plan step (phase k is
step k-1), "runtime overhead" (phase 0, and the Python interpreter / numpy / cffi blocks anywhere), or
"pool sync" (the thread pool's waiting and waking, whose amount depends on the emulator's scheduling:
left out). Its cost is executions x the block's cycles per execution from llvm-mca.

Threads: a parallel loop of E iterations on T threads runs in chunks of ceil(E/T) iterations, task
t on thread t, and the calling thread always runs task 0, a full chunk: the largest. So with T
threads the latency is what the main thread (vCPU 0) executes outside "pool sync": its share of
every parallel loop plus all serial work. A run with T threads counts exactly that; the 1-thread
run counts all the work.

Only the blocks that make up `coverage` of the executed instructions go through llvm-mca (largest
first); the rest get the executed-weighted cycles per instruction of those.
"""
from __future__ import annotations

from dataclasses import dataclass

from .pi_symbols import AddressMap

OVERHEAD = "runtime overhead"
SYNC = "pool sync"


@dataclass
class Labelled:
    """One trace reduced to (label, instruction-tuple) -> executions on the critical path."""
    threads: int
    execs: dict  # (label, insns) -> executions (vCPU 0 when threads > 1)
    work_insns: int  # instructions of all vCPUs outside sync and overhead (the total work)


def label_trace(trace, model_path: str) -> Labelled:
    amap = AddressMap(trace.side["maps"], model_path)
    kinds = [s["kind"] for s in trace.side["steps"]]
    cat = {}
    for i, (vaddr, _insns) in trace.blocks.items():
        mod, func = amap.lookup(vaddr)
        cat[i] = amap.category(mod, func)
    execs: dict = {}
    work = 0
    for phase, i, vcpu, n in trace.counts:
        c = cat[i]
        if c == "sync":
            label = SYNC
        elif phase == 0 or c == "overhead":
            label = OVERHEAD
        else:
            label = kinds[phase - 1]
        insns = trace.blocks[i][1]
        if label not in (SYNC, OVERHEAD):
            work += n * len(insns)
        if trace.threads > 1 and vcpu != 0:
            continue
        key = (label, insns)
        execs[key] = execs.get(key, 0) + n
    return Labelled(trace.threads, execs, work)


def estimate_cycles(labelled: list, analyzer, coverage: float = 0.995) -> dict:
    """-> {"cycles": {threads: {label: cycles}}, "instructions": {threads: {label: n}}, "coverage": {...}}."""
    weight: dict = {}
    for lt in labelled:
        for (label, insns), n in lt.execs.items():
            if label != SYNC:
                weight[insns] = weight.get(insns, 0) + n * len(insns)
    total = sum(weight.values())
    order = sorted(weight, key=lambda b: (-weight[b], b))
    chosen, acc = [], 0
    for b in order:
        if total and acc >= coverage * total:
            break
        chosen.append(b)
        acc += weight[b]
    cpe = dict(zip(chosen, analyzer.cycles(chosen)))
    cpi = sum(cpe[b] * weight[b] / len(b) for b in chosen if b) / max(1, sum(weight[b] for b in chosen))
    cycles, insns_out = {}, {}
    for lt in labelled:
        cyc, ins = {}, {}
        for (label, insns), n in lt.execs.items():
            ins[label] = ins.get(label, 0) + n * len(insns)
            if label == SYNC:
                continue
            c = cpe[insns] if insns in cpe else cpi * len(insns)
            cyc[label] = cyc.get(label, 0.0) + n * c
        cycles[lt.threads], insns_out[lt.threads] = cyc, ins
    return {"cycles": cycles, "instructions": insns_out,
            "coverage": {"target": coverage, "analysed": acc / total if total else 1.0,
                         "instructions": total, "blocks": len(weight), "blocks_analysed": len(chosen),
                         "cpi_rest": cpi, "undecodable_instructions": analyzer.undecodable}}
