"""What the attention quantizers see: q and k in code units, and the entropy of their codes.

Q-ViT's argument for IRM is informational: a low-bit quantizer keeps the most information about q
and k when their codes are evenly used (entropy near `bits`), and the rectified q~, k~ (a learned
LayerNorm per head) get there where the raw q, k do not. This measures it on trained models: for
every attention layer, the pre-quantization values in code units u = x / step + zp (so the code
boundaries sit at 0.5, 1.5, ... for every model) and the entropy in bits of the codes
clamp(round(u), 0, 2^b - 1), pooled over heads.
"""

from __future__ import annotations

from pathlib import Path

import torch

from qvit.attention import QuantAttentionCore
from qvit.checkpoint import load_model
from qvit.data import load_dataset
from qvit.distill import record_qk
from qvit.train import iterate


@torch.no_grad()
def qk_code_units(checkpoint: str, images: int = 512) -> tuple[list[dict], dict]:
    """Per attention layer {"q": u, "k": u, "q_codes", "k_codes", "bits"} (flattened code units and
    codes) and the checkpoint config."""
    model, config = load_model(checkpoint)
    model.eval()
    cores = [m for m in model.modules() if isinstance(m, QuantAttentionCore)]
    if not cores:
        raise ValueError(f"{checkpoint} has no quantized attention")
    ds = load_dataset(config["train"]["data"], "val")
    x, _ = next(iterate(ds, config["data"]["img_size"], images, train=False, limit=images))
    with record_qk(model) as store:
        model(x)
    layers = []
    for core, (q, k) in zip(cores, store):
        units = {}
        for name, t, act in (("q", q, core.q_act), ("k", k, core.k_act)):
            p = act.int_params()
            step = torch.from_numpy(p["step"]).view(1, -1, 1, 1)
            zp = torch.from_numpy(p["zp"]).float().view(1, -1, 1, 1)
            units[name] = (t / step + zp).flatten()
            # the quantizer's own rounding (round(x / step) + zp differs from round(u) at odd-zp ties)
            units[name + "_codes"] = torch.clamp(torch.round(t / step) + zp, 0, (1 << act.bits) - 1).flatten()
        units["bits"] = core.a_bits
        layers.append(units)
    return layers, config


def code_entropy(u: torch.Tensor, bits: int) -> float:
    """Entropy in bits of the codes clamp(round(u), 0, 2^b - 1)."""
    codes = torch.clamp(torch.round(u), 0, (1 << bits) - 1).long()
    p = torch.bincount(codes, minlength=1 << bits).double() / codes.numel()
    return float(-(p[p > 0] * p[p > 0].log2()).sum())


def entropy_table(layers: list[dict]) -> list[dict]:
    return [
        {
            "layer": i,
            "q": code_entropy(layer["q"], layer["bits"]),
            "k": code_entropy(layer["k"], layer["bits"]),
        }
        for i, layer in enumerate(layers)
    ]


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def plot_qk_distributions(checkpoints: dict[str, str], path: Path, layer: int = -1) -> list[dict]:
    """Histograms of q and k (code units) of one layer for each labelled checkpoint; returns the
    per-layer code entropies of each: [{"label", "layer", "q", "k"}]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), dpi=120)
    rows = []
    for label, ckpt in checkpoints.items():
        layers, _ = qk_code_units(ckpt)
        table = entropy_table(layers)
        rows += [{"label": label, **r} for r in table]
        chosen = layers[layer]
        qmax = (1 << chosen["bits"]) - 1
        for ax, name in zip(axes, ("q", "k")):
            u = chosen[name].clamp(-3, qmax + 3).numpy()
            h = table[layer][name]
            ax.hist(
                u,
                bins=120,
                range=(-3, qmax + 3),
                histtype="step",
                density=True,
                lw=1.2,
                label=f"{label}: H(codes) = {h:.2f} bit",
            )
    n_layers = len(rows) // max(len(checkpoints), 1)
    for ax, name in zip(axes, ("q", "k")):
        for b in range(qmax):
            ax.axvline(b + 0.5, color="gray", lw=0.6, ls=":")
        ax.set_title(f"{name} of layer {layer % n_layers + 1} before {chosen['bits']}-bit Q_a", fontsize=9)
        ax.set_xlabel("x / step + zero point (code units; dotted: code boundaries)", fontsize=8)
        ax.legend(fontsize=7)
    _save(fig, path)
    return rows



@torch.no_grad()
def logit_spread(checkpoint: str, images: int = 256) -> list[float]:
    """Per attention layer, the spread of the attention logits q k^T / sqrt(d): the standard
    deviation over the keys of each query row, averaged over rows, heads and images. For a
    quantized model q and k are taken after Q_a (what its softmax sees), else as computed. A
    normalisation that inflates this sharpens every attention row the teacher had learned."""
    model, config = load_model(checkpoint)
    model.eval()
    quantized = any(isinstance(m, QuantAttentionCore) for m in model.modules())
    ds = load_dataset(config["train"]["data"], "val")
    x, _ = next(iterate(ds, config["data"]["img_size"], images, train=False, limit=images))
    with record_qk(model, "quantized" if quantized else "rectified") as store:
        model(x)
    return [float((q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).std(dim=-1, unbiased=False).mean())
            for q, k in store]


@torch.no_grad()
def head_spread_variation(checkpoint: str, images: int = 512) -> list[dict]:
    """What the per-head IRM has to rectify: per attention layer, for q and k (as the checkpoint
    computes them, before any IRM), each head's standard deviation over its N x d values in every
    image, and how much it varies across images: {"layer", "q_cv", "k_cv", "q_ratio", "k_ratio"}
    with cv the coefficient of variation across images and ratio the 95th over the 5th percentile,
    both averaged over heads. Per-head statistics divide exactly this per-image spread out."""
    model, config = load_model(checkpoint)
    model.eval()
    store, hooks = [], []
    for m in model.modules():  # q, k as qkv computes them: before any IRM, in every family
        if hasattr(m, "qkv") and hasattr(m, "num_heads"):
            hooks.append(m.qkv.register_forward_hook(lambda lin, i, o, h=m.num_heads: store.append(
                o.reshape(o.shape[0], o.shape[1], 3, h, -1).permute(2, 0, 3, 1, 4)[:2])))
    ds = load_dataset(config["train"]["data"], "val")
    x, _ = next(iterate(ds, config["data"]["img_size"], images, train=False, limit=images))
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for layer, (q, k) in enumerate(store):
        row = {"layer": layer}
        for name, t in (("q", q), ("k", k)):
            sd = t.double().std(dim=(-2, -1), unbiased=False)  # [B, H]
            row[f"{name}_cv"] = float((sd.std(0) / sd.mean(0)).mean())
            row[f"{name}_ratio"] = float((sd.quantile(0.95, 0) / sd.quantile(0.05, 0)).mean())
        rows.append(row)
    return rows


def plot_irm_forms(checkpoints: dict[str, str], teacher: str | None, path: Path,
                   images: int = 256) -> list[dict]:
    """Per layer, for each labelled quantized checkpoint: the attention-logit spread (with the
    full-precision teacher's for reference) and the entropy of the q and k codes. Returns
    [{"label", "layer", "spread", "q", "k"}] (the teacher with q = k = None)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    fig, (ax_s, ax_h) = plt.subplots(1, 2, figsize=(8.5, 3.3), dpi=120)
    if teacher is not None:
        spread = logit_spread(teacher, images)
        rows += [{"label": "FP32 teacher", "layer": i, "spread": s, "q": None, "k": None}
                 for i, s in enumerate(spread)]
        ax_s.plot(range(1, len(spread) + 1), spread, "k--", lw=1, label="FP32 teacher")
    bits = None
    for (label, ckpt), color in zip(checkpoints.items(), ("C0", "C1", "C2", "C3")):
        spread = logit_spread(ckpt, images)
        layers, _ = qk_code_units(ckpt, images)
        table = entropy_table(layers)
        bits = layers[0]["bits"]
        xs = range(1, len(spread) + 1)
        ax_s.plot(xs, spread, "o-", color=color, label=label)
        ax_h.plot(xs, [r["q"] for r in table], "o-", color=color, label=f"{label}: q")
        ax_h.plot(xs, [r["k"] for r in table], "s:", color=color, label=f"{label}: k")
        rows += [{"label": label, "layer": i, "spread": s, "q": r["q"], "k": r["k"]}
                 for i, (s, r) in enumerate(zip(spread, table))]
    ax_s.set_title("attention-logit spread (std over keys of q k^T / sqrt(d))", fontsize=8)
    ax_h.set_title(f"entropy of the {bits}-bit q / k codes (bits)", fontsize=8)
    for ax in (ax_s, ax_h):
        ax.set_xlabel("layer", fontsize=8)
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    _save(fig, path)
    return rows


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m qvit.qk_stats",
                                description="how much each head's q / k spread varies across images")
    p.add_argument("checkpoint", help="a qvit train checkpoint directory (full precision or quantized)")
    p.add_argument("--images", type=int, default=512, help="validation images")
    args = p.parse_args(argv)
    rows = head_spread_variation(args.checkpoint, args.images)
    print(f"Per-image spread of each head's q / k ({args.images} validation images, {args.checkpoint}):\n")
    print("| layer | q: cv across images | q: p95 / p5 | k: cv across images | k: p95 / p5 |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layer'] + 1} | {r['q_cv']:.3f} | {r['q_ratio']:.2f} "
              f"| {r['k_cv']:.3f} | {r['k_ratio']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
