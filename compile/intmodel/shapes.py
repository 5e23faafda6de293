"""Shape inference over an integer model's graph: every activation's shape without the batch axis.

Swin's window ops multiply the batch: their outputs are reported per image, i.e. [nW, T, C]
(batch axis B*nW). A graph whose shapes do not fit is one IntModelError line.
"""

from __future__ import annotations

from .spec import IntModelError, num_windows, pair


def infer_shapes(model) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {"image": model.input_shape}

    def get(where, name):
        if name not in shapes:
            raise IntModelError(f"{where}: input {name!r} is not produced by an earlier op")
        return shapes[name]

    def bad(where, msg):
        raise IntModelError(f"{where}: {msg}")

    for i, op in enumerate(model.graph):
        kind, p = op["op"], op.get("param")
        where = f"graph[{i}] ({kind} {p or op['out']})"
        ins = op["in"] if isinstance(op["in"], list) else [op["in"]]
        s = [get(where, n) for n in ins]
        x = s[0]
        if kind == "patch_embed":
            c, hh, ww = x
            pt = int(op["patch"])
            w = model.tensors[f"{p}.weight"]
            if hh % pt or ww % pt:
                bad(where, f"image {hh}x{ww} is not a whole number of {pt}x{pt} patches")
            if w.shape[1] != c * pt * pt:
                bad(where, f"weight K={w.shape[1]} but C*patch^2={c * pt * pt}")
            out = ((hh // pt) * (ww // pt), w.shape[0])
        elif kind == "qlinear":
            w = model.tensors[f"{p}.weight"]
            if x[-1] != w.shape[1]:
                bad(where, f"input has {x[-1]} features, weight expects K={w.shape[1]}")
            out = x[:-1] + (w.shape[0],)
        elif kind == "prepend":
            t, d = x
            for name in op["tensors"]:
                if model.tensors[name].shape != (1, 1, d):
                    bad(
                        where,
                        f"token {name!r} has shape {list(model.tensors[name].shape)}, expected [1, 1, {d}]",
                    )
            out = (t + len(op["tensors"]), d)
        elif kind == "add_const":
            c = model.tensors[op["tensor"]]
            if c.shape != (1,) + x:
                bad(where, f"{op['tensor']!r} has shape {list(c.shape)}, expected {[1, *x]}")
            out = x
        elif kind == "layernorm":
            if model.tensors[f"{p}.weight"].shape != (x[-1],):
                bad(where, f"weight has shape {list(model.tensors[f'{p}.weight'].shape)}, expected [{x[-1]}]")
            out = x
        elif kind == "gelu":
            out = x
        elif kind in ("add", "average"):
            if s[0] != s[1]:
                bad(where, f"operand shapes differ: {list(s[0])} vs {list(s[1])}")
            out = x
        elif kind == "attention":
            h, d = int(op["heads"]), int(op["head_dim"])
            t = x[-2]
            if x[-1] != 3 * h * d:
                bad(where, f"qkv has {x[-1]} features, expected 3*heads*head_dim={3 * h * d}")
            rpb = model.tensors.get(f"{p}.rel_pos_bias")
            if rpb is not None and rpb.shape != (h, t, t):
                bad(where, f"rel_pos_bias has shape {list(rpb.shape)}, expected {[h, t, t]}")
            mask = model.tensors.get(f"{p}.mask")
            if mask is not None:
                if len(x) != 3 or mask.shape != (x[0], t, t):
                    bad(
                        where,
                        f"mask has shape {list(mask.shape)}, expected {[x[0] if len(x) == 3 else 1, t, t]}",
                    )
            out = x[:-1] + (h * d,)
        elif kind == "window_partition":
            gh, gw = pair(op["grid"])
            wh, ww = pair(op["window"])
            if x[0] != gh * gw:
                bad(where, f"{x[0]} tokens but grid {gh}x{gw}")
            out = (num_windows(op["grid"], op["window"]), wh * ww, x[1])
        elif kind == "window_reverse":
            gh, gw = pair(op["grid"])
            wh, ww = pair(op["window"])
            if len(x) != 3 or x[0] != num_windows(op["grid"], op["window"]) or x[1] != wh * ww:
                bad(where, f"input {list(x)} is not the windows of grid {gh}x{gw}, window {wh}x{ww}")
            out = (gh * gw, x[2])
        elif kind == "patch_merge":
            gh, gw = pair(op["grid"])
            if x[0] != gh * gw:
                bad(where, f"{x[0]} tokens but grid {gh}x{gw}")
            out = (((gh + 1) // 2) * ((gw + 1) // 2), 4 * x[1])
        elif kind == "token":
            if not -x[0] <= int(op["index"]) < x[0]:
                bad(where, f"token index {op['index']} out of range for {x[0]} tokens")
            out = x[1:]
        elif kind == "mean_tokens":
            out = x[1:]
        else:  # pragma: no cover - _check_op rejects unknown ops first
            bad(where, "unknown op")
        shapes[op["out"]] = tuple(int(v) for v in out)
    return shapes

