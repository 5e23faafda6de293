"""Activation memory plan: one arena, tensors whose lifetimes do not overlap share bytes.

Without it a DeiT-S run touches ~100 MB of distinct buffers (every op's output its own array);
with it the working set is a few MB and stays in cache. A tensor is live from the step that
writes it to the last step that reads it (views count as their base); a step's outputs never
share bytes with its inputs because both are live during that step.
"""
from __future__ import annotations

import numpy as np

ALIGN = 64


def _nbytes(t: dict) -> int:
    return int(np.prod(t["shape"])) * np.dtype(t["dtype"]).itemsize


def plan_arena(tensors: dict, steps: list, pinned=("image", "logits")) -> int:
    """Give every activation tensor (not const, not view) an "arena" offset; returns the arena size.
    Pinned tensors live for the whole run (input and output stay readable)."""
    base = {n: t.get("view", n) for n, t in tensors.items()}
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, st in enumerate(steps):
        for a in st["args"]:
            b = base[a]
            if tensors[b].get("const"):
                continue
            first.setdefault(b, i)
            last[b] = i
    n_steps = len(steps)
    for p in pinned:
        if p in tensors:
            first[p], last[p] = -1, n_steps
    order = sorted(first, key=lambda n: (first[n], -_nbytes(tensors[n])))
    live: list[tuple[int, int, str]] = []  # (offset, size, name)
    end = 0
    for name in order:
        start = first[name]
        live = [b for b in live if last[b[2]] >= start]  # free what died before this step
        size = -(-_nbytes(tensors[name]) // ALIGN) * ALIGN
        off, pos = 0, 0
        for o, s, _ in sorted(live):  # first fit between live blocks
            if o - pos >= size:
                break
            pos = max(pos, o + s)
        off = pos
        live.append((off, size, name))
        tensors[name]["arena"] = off
        end = max(end, off + size)
    return end
