"""DeiT on the integer side: its op layout (shared by the exporter and the synthetic builder) and
`random_deit`, a tiny DeiT with random codes and calibrated steps (numpy only)."""

from __future__ import annotations

import numpy as np

from .calibrate import calibrate
from .format import IntModel
from .graph import GraphBuilder, block
from .spec import pair
from .synthetic import RandomSource, input_cfg


def lay_out_deit(b: GraphBuilder, src, s: dict) -> None:
    """s: in_chans, img_size [H, W], patch, dim, depth, heads, mlp_hidden, num_classes, distilled,
    gelu_clip."""
    dim, p = s["dim"], s["patch"]
    tokens = (s["img_size"][0] // p) * (s["img_size"][1] // p)
    x = b.patch_embed(
        "image",
        "patch_embed",
        "patch_embed.proj",
        src.linear("patch_embed.proj", dim, s["in_chans"] * p * p, True, "embed"),
        p,
    )
    names = ["cls_token"] + (["dist_token"] if s["distilled"] else [])
    x = b.prepend(x, "tokens", {n: src.tensor(n, (1, 1, dim)) for n in names})
    x = b.add_const(x, "embedded", "pos_embed", src.tensor("pos_embed", (1, tokens + len(names), dim)))
    for i in range(s["depth"]):
        x = block(b, src, f"blocks.{i}", x, dim, s["heads"], s["mlp_hidden"], s["gelu_clip"])
    x = b.layernorm(x, "norm", "norm", *src.layernorm("norm", dim))
    n = s["num_classes"]
    if s["distilled"]:
        c = b.qlinear(b.token(x, "cls", 0), "logits_cls", "head", src.linear("head", n, dim, True, "head"))
        d = b.qlinear(
            b.token(x, "dist", 1), "logits_dist", "head_dist", src.linear("head_dist", n, dim, True, "head")
        )
        b.average(c, d, "logits")
    else:
        b.qlinear(b.token(x, "cls", 0), "logits", "head", src.linear("head", n, dim, True, "head"))


def random_deit(
    *,
    bits: int = 2,
    irm: bool = True,
    irm_stat: str = "token",
    distilled: bool = False,
    depth: int = 2,
    dim: int = 32,
    heads: int = 2,
    mlp_ratio: float = 2.0,
    patch: int = 4,
    img_size=28,
    in_chans: int = 1,
    num_classes: int = 10,
    embed_bits: int = 8,
    head_bits: int = 8,
    gelu_clip: float | None = 10.0,
    seed: int = 0,
    calib_batch: int = 8,
) -> IntModel:
    """A tiny DeiT integer model with random codes and steps calibrated on random images.
    irm_stat: the IRM statistic ("token" or "head") when irm."""
    rng = np.random.default_rng(seed)
    src = RandomSource(rng, bits, embed_bits, head_bits, irm, irm_stat=irm_stat)
    b = GraphBuilder()
    spec = {
        "in_chans": in_chans,
        "img_size": pair(img_size),
        "patch": patch,
        "dim": dim,
        "depth": depth,
        "heads": heads,
        "mlp_hidden": int(dim * mlp_ratio),
        "num_classes": num_classes,
        "distilled": distilled,
        "gelu_clip": gelu_clip,
    }
    lay_out_deit(b, src, spec)
    name = f"random_deit{'_distilled' if distilled else ''}_d{dim}x{depth}_patch{patch}_{pair(img_size)[0]}"
    model = b.build(
        arch=name,
        family="deit",
        bits={"weight": bits, "act": bits, "embed": embed_bits, "head": head_bits},
        input=input_cfg(in_chans, img_size),
        num_classes=num_classes,
        classes=None,
        irm=irm,
        distilled=distilled,
    )
    return calibrate(model, rng.normal(size=(calib_batch, in_chans, *pair(img_size))).astype(np.float32))
