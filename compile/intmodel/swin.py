"""Swin on the integer side: its op layout (window attention, shifted windows and their masks,
patch merging), the shifted-window mask as timm computes it, and `random_swin`, a tiny Swin with
random codes and calibrated steps (numpy only)."""

from __future__ import annotations

import numpy as np

from .calibrate import calibrate
from .format import IntModel
from .graph import GraphBuilder, block
from .spec import compact, padded_grid, pair
from .synthetic import RandomSource, input_cfg


def shift_window_mask(grid, window, shift) -> np.ndarray | None:
    """The shifted-window attention mask [nW, T, T] (0 inside a region, -100 across), as timm's
    SwinTransformerBlock.get_attn_mask; None without shift."""
    (wh, ww), (sh, sw) = pair(window), pair(shift)
    if sh == 0 and sw == 0:
        return None
    hp, wp = padded_grid(grid, window)
    img = np.zeros((hp, wp), np.float32)
    cnt = 0
    # timm's exact slices (with Python's -0 == 0 semantics when one axis has no shift)
    for hs in (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)):
        for ws in (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)):
            img[hs, ws] = cnt
            cnt += 1
    win = img.reshape(hp // wh, wh, wp // ww, ww).transpose(0, 2, 1, 3).reshape(-1, wh * ww)
    diff = win[:, None, :] - win[:, :, None]
    return np.where(diff != 0, np.float32(-100.0), np.float32(0.0)).astype(np.float32)


def lay_out_swin(b: GraphBuilder, src, s: dict) -> None:
    """s: in_chans, img_size, patch, embed_dim, patch_norm, num_classes, gelu_clip, mlp_ratio, and
    stages: [{dim, heads, downsample (bool), blocks: [{window, shift}]}] (window/shift as timm
    resolved them for each block's grid)."""
    p = s["patch"]
    grid = (s["img_size"][0] // p, s["img_size"][1] // p)
    dim = s["embed_dim"]
    x = b.patch_embed(
        "image",
        "patch_embed",
        "patch_embed.proj",
        src.linear("patch_embed.proj", dim, s["in_chans"] * p * p, True, "embed"),
        p,
    )
    if s.get("patch_norm", True):
        x = b.layernorm(x, "patch_embed.norm", "patch_embed.norm", *src.layernorm("patch_embed.norm", dim))
    for i, st in enumerate(s["stages"]):
        pre = f"layers.{i}"
        if st["downsample"]:
            x = b.patch_merge(x, f"{pre}.downsample.merge", grid)
            grid = ((grid[0] + 1) // 2, (grid[1] + 1) // 2)
            x = b.layernorm(
                x,
                f"{pre}.downsample.norm",
                f"{pre}.downsample.norm",
                *src.layernorm(f"{pre}.downsample.norm", 4 * dim),
            )
            x = b.qlinear(
                x,
                f"{pre}.downsample.reduction",
                f"{pre}.downsample.reduction",
                src.linear(f"{pre}.downsample.reduction", st["dim"], 4 * dim, False, "block"),
            )
        dim = st["dim"]
        for j, blk in enumerate(st["blocks"]):
            win = {"grid": grid, "window": blk["window"], "shift": blk["shift"]}
            x = block(
                b,
                src,
                f"{pre}.blocks.{j}",
                x,
                dim,
                st["heads"],
                int(dim * s["mlp_ratio"]),
                s["gelu_clip"],
                window_op=win,
                mask=shift_window_mask(**win),
            )
    x = b.layernorm(x, "norm", "norm", *src.layernorm("norm", dim))
    x = b.mean_tokens(x, "pooled")
    b.qlinear(x, "logits", "head.fc", src.linear("head.fc", s["num_classes"], dim, True, "head"))


def random_swin(
    *,
    bits: int = 2,
    irm: bool = True,
    irm_stat: str = "token",
    embed_dim: int = 16,
    depths=(2, 2),
    heads=(2, 4),
    window: int = 4,
    patch: int = 2,
    img_size=28,
    in_chans: int = 1,
    num_classes: int = 10,
    mlp_ratio: float = 2.0,
    embed_bits: int = 8,
    head_bits: int = 8,
    gelu_clip: float | None = 10.0,
    seed: int = 0,
    calib_batch: int = 4,
) -> IntModel:
    """A tiny Swin integer model (window attention, relative position bias, shifted windows with
    their masks, patch merging) with random codes and calibrated steps. Window and shift are
    resolved per stage as timm does (window = grid and no shift once the grid fits in one window);
    a grid that is not a whole number of windows is zero-padded (timm's behaviour)."""
    rng = np.random.default_rng(seed)
    rel_pos_bias = {}
    grid = (pair(img_size)[0] // patch, pair(img_size)[1] // patch)
    stages, dim = [], embed_dim
    for i, (depth, h) in enumerate(zip(depths, heads)):
        if i > 0:
            grid = ((grid[0] + 1) // 2, (grid[1] + 1) // 2)
            dim *= 2
        ws = [min(window, g) for g in grid]
        blocks = []
        for j in range(depth):
            sh = [0 if g <= window or j % 2 == 0 else window // 2 for g in grid]
            blocks.append({"window": compact(ws), "shift": compact(sh)})
            t = ws[0] * ws[1]
            rel_pos_bias[f"layers.{i}.blocks.{j}.attn"] = (rng.normal(size=(h, t, t)) * 0.5).astype(
                np.float32
            )
        stages.append({"dim": dim, "heads": h, "downsample": i > 0, "blocks": blocks})
    src = RandomSource(rng, bits, embed_bits, head_bits, irm, rel_pos_bias, irm_stat)
    spec = {
        "in_chans": in_chans,
        "img_size": pair(img_size),
        "patch": patch,
        "embed_dim": embed_dim,
        "patch_norm": True,
        "num_classes": num_classes,
        "gelu_clip": gelu_clip,
        "mlp_ratio": mlp_ratio,
        "stages": stages,
    }
    b = GraphBuilder()
    lay_out_swin(b, src, spec)
    model = b.build(
        arch=f"random_swin_d{embed_dim}_w{window}_patch{patch}_{pair(img_size)[0]}",
        family="swin",
        bits={"weight": bits, "act": bits, "embed": embed_bits, "head": head_bits},
        input=input_cfg(in_chans, img_size),
        num_classes=num_classes,
        classes=None,
        irm=irm,
    )
    return calibrate(model, rng.normal(size=(calib_batch, in_chans, *pair(img_size))).astype(np.float32))
