"""Hand schedules: TE kernels -> scheduled PrimFuncs for one target.

Default CPU builds in TVM 0.27 are unscheduled and single-threaded, so every kernel gets one here:
elementwise stages are inlined into their consumers, the outer loop of each remaining block is
parallel, and the bit-serial GEMM gets a register-tiled, vectorized schedule (the hot spot).
"""
from __future__ import annotations

import tvm
from tvm import s_tir, te

from . import kernels


def prim_func(name: str, ins, outs):
    return te.create_prim_func([*ins, *outs]).with_attr("global_symbol", name)


def _blocks(sch, func_name):
    root = sch.get_sblock("root", func_name=func_name)
    return sch.get_child_blocks(root)


def _is_reduction(sch, blk) -> bool:
    return any(iv.iter_type == 2 for iv in sch.get(blk).iter_vars)  # CommReduce


def auto_inline(sch, func_name: str, keep: tuple = ()) -> None:
    """Inline every spatial (non-reduction) intermediate stage into its consumers."""
    changed = True
    while changed:
        changed = False
        for blk in _blocks(sch, func_name):
            name = sch.get(blk).name_hint
            if name in keep or _is_reduction(sch, blk):
                continue
            try:
                sch.compute_inline(blk)
                changed = True
                break
            except Exception:  # an output block, or used where it cannot be inlined
                continue


def parallel_outer(sch, func_name: str, min_extent: int = 2) -> None:
    """Make the outermost loop of each top-level block parallel when it has enough iterations."""
    for blk in _blocks(sch, func_name):
        loops = sch.get_loops(blk)
        if not loops:
            continue
        try:
            ext = int(sch.get(loops[0]).extent)
        except TypeError:
            continue
        if ext < min_extent:
            if len(loops) > 1 and _is_spatial_loop(sch, blk, 1):
                try:
                    loops = [sch.fuse(loops[0], loops[1])]
                except Exception:
                    continue
            else:
                continue
        try:
            sch.parallel(loops[0])
        except Exception:
            pass


def _is_spatial_loop(sch, blk, idx) -> bool:
    iv = sch.get(blk).iter_vars
    return idx < len(iv) and iv[idx].iter_type == 0


def generic(func: tvm.tirx.PrimFunc, name: str, keep: tuple = ()) -> tvm.tirx.PrimFunc:
    sch = s_tir.Schedule(tvm.IRModule({name: func}))
    auto_inline(sch, name, keep)
    parallel_outer(sch, name)
    return sch.mod[name]


def bitserial_linear(func, name: str, m: int, n: int, target_kind: str, mtile: int = 4):
    """Register tile mtile rows x NV output channels: broadcast one activation word, AND with NV
    weight words, popcount, accumulate; the epilogue runs on the tile while it is in registers."""
    sch = s_tir.Schedule(tvm.IRModule({name: func}))
    auto_inline(sch, name)
    acc = sch.get_sblock("acc", func_name=name)
    y = sch.get_sblock("y", func_name=name)
    r, c, i, j, w = sch.get_loops(acc)
    ro, ri = sch.split(r, factors=[None, mtile])
    co, ci = sch.split(c, factors=[None, kernels.NV])
    sch.reorder(co, ro, i, j, w, ri, ci)
    fused = sch.fuse(co, ro)
    sch.parallel(fused)
    sch.reverse_compute_at(y, fused)
    sch.vectorize(ci)
    sch.unroll(ri)
    init = sch.decompose_reduction(acc, i)
    sch.vectorize(sch.get_loops(init)[-1])
    return sch.mod[name]
