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


# Stages computed once into a buffer rather than inlined (the int16 codes of the 8-bit layers).
MATERIALIZE = ("codes",)


def auto_inline(sch, func_name: str, keep: tuple = ()) -> None:
    """Inline every spatial (non-reduction) intermediate stage into its consumers."""
    keep = tuple(keep) + MATERIALIZE
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


def vector_partials(sch, func_name: str) -> None:
    """kernels._vreduce partial blocks: loops (..., lane, q) -> (..., q, lane), lane vectorized."""
    for blk in _blocks(sch, func_name):
        if not sch.get(blk).name_hint.endswith("_vpart"):
            continue
        loops = sch.get_loops(blk)
        lane, q = loops[-2], loops[-1]
        sch.reorder(q, lane)
        sch.vectorize(lane)
        init = sch.decompose_reduction(blk, q)
        sch.vectorize(sch.get_loops(init)[-1])


def generic(func: tvm.tirx.PrimFunc, name: str, keep: tuple = ()) -> tvm.tirx.PrimFunc:
    if func.body.block.name_hint != "root":
        return func  # a te.extern kernel (a loop calling C, native/model): nothing to schedule
    sch = s_tir.Schedule(tvm.IRModule({name: func}))
    auto_inline(sch, name, keep)
    vector_partials(sch, name)
    parallel_outer(sch, name)
    return sch.mod[name]


def bitserial_linear(func, name: str, m: int, n: int, target_kind: str, mtile: int = kernels.MTILE,
                     nv: int = kernels.NV, panel_epilogue: bool = True):
    """Output tile mtile rows x nv channels: per (i, j) plane pair, broadcast one activation word, AND
    with nv weight words, popcount, accumulate in uint64 lanes over K; then weigh the plane pair into
    the int32 tile, and run the float epilogue on the tile while it is hot."""
    sch = s_tir.Schedule(tvm.IRModule({name: func}))
    auto_inline(sch, name)
    acc = sch.get_sblock("acc", func_name=name)
    y = sch.get_sblock("y", func_name=name)
    part = sch.get_sblock("part", func_name=name)
    loops = sch.get_loops(acc)
    r, c, red = loops[0], loops[1], loops[2:]
    ro, ri = sch.split(r, factors=[None, mtile])
    co, ci = sch.split(c, factors=[None, nv])
    sch.reorder(co, ro, *red, ri, ci)
    # panel_epilogue: the epilogue runs per channel panel over all M rows (after the panel's row
    # tiles): its loop then needs no row predicate and vectorizes over the nv channels (per row tile
    # it ran scalar when M % mtile != 0, e.g. DeiT's 197 tokens: DeiT-S fc1 with GELU 0.75 -> 0.60
    # ms). Per row tile it stays hot in registers: better for the cheap residual epilogue (proj).
    panel_epilogue = panel_epilogue and n % nv == 0
    fused = co if panel_epilogue else sch.fuse(co, ro)
    sch.parallel(fused)
    sch.compute_at(part, red[-1])
    pl = sch.get_loops(part)  # ..., r', c', w  (compute_at drops unit loops: i', j' and w when K <= 64)
    kw = [int(iv.dom.extent) for iv in sch.get(part).iter_vars if iv.iter_type == 2][0]
    if kw > 1:
        sch.reorder(pl[-1], pl[-3], pl[-2])
        r_in, c_in = pl[-3], pl[-2]
    else:
        r_in, c_in = pl[-2], pl[-1]
    sch.unroll(r_in)
    sch.vectorize(c_in)
    try:  # 1-bit weights: popcounts of the activation planes, per tile row
        sch.compute_at(sch.get_sblock("apc", func_name=name), fused)
    except Exception:  # no such block for b >= 2 bit weights
        pass
    sch.reverse_compute_at(y, fused)
    if panel_epilogue:  # the float epilogue over the panel's nv channels
        # (never with a row predicate: TVM 0.27 then stored the vector for padded rows too -> overflow)
        sch.vectorize(sch.get_loops(y)[-1])
    sch.vectorize(ci)
    sch.unroll(ri)
    for lp in red:
        sch.unroll(lp)
    if c_in != pl[-1]:
        pinit = sch.decompose_reduction(part, pl[-1])
        sch.vectorize(sch.get_loops(pinit)[-1])
    init = sch.decompose_reduction(acc, red[0])
    sch.vectorize(sch.get_loops(init)[-1])
    return sch.mod[name]

