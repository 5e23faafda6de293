"""`qvit export`: the integer model of A's quantized torch models, checked against the fake-quant
PyTorch forward layer by layer (integer accumulators equal, outputs close) and end to end."""

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from qvit import export  # noqa: E402
from qvit.models import create_model  # noqa: E402
from qvit_compile.intmodel import IntModel  # noqa: E402
from qvit_compile.intmodel import reference as ref  # noqa: E402
from qvit_edge import quant  # noqa: E402


def _lively(model, seed):
    """Random weights large enough that every layer matters (timm's init is near zero), then one
    forward so the quantizers initialise from data."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("a_quant.step", "a_quant.offset", "w_quant.step")) or "_act." in name:
                continue
            if name.endswith("gamma"):  # per-head IRM scale [H, d]: it divides, keep it near 1
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("beta"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif (
                p.dim() >= 2
                and "relative_position" not in name
                and "token" not in name
                and "pos_embed" not in name
            ):
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
            elif name.endswith("weight"):  # LayerNorm / IRM scales
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):  # small, so the logits depend on the image
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
            else:  # tokens, position embedding, relative position bias table
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    model.eval()
    with torch.no_grad():
        model(_images(16, model, seed=seed + 100))
    return model


def _images(n, model, seed=0):
    """Smooth random patterns plus noise, varying per image (so even pooled features differ)."""
    pe = model.patch_embed
    g = torch.Generator().manual_seed(seed)
    c = pe.proj.in_channels
    coarse = torch.randn(n, c, 4, 4, generator=g) * 1.5
    x = torch.nn.functional.interpolate(coarse, size=tuple(pe.img_size), mode="bilinear", align_corners=False)
    return x + 0.3 * torch.randn(n, c, *pe.img_size, generator=g)


MODELS = {
    "deit_w2_irm": lambda: create_model(
        "deit_tiny_patch4_28", bits=2, irm=True, depth=2, embed_dim=48, num_heads=3
    ),
    "deit_distilled_w3_noirm": lambda: create_model(
        "deit_tiny_distilled_patch4_28", bits=3, irm=False, depth=2, embed_dim=48, num_heads=3
    ),
    "deit_w1": lambda: create_model(
        "deit_tiny_patch4_28", bits=1, irm=True, depth=1, embed_dim=32, num_heads=2
    ),
    # 14x14 grid, window 7: shifted windows (masks) in stage 0, merge to 7x7 (one window, no shift)
    "swin_w7_w4": lambda: create_model(
        "swin_tiny_patch2_window7_28", bits=4, depths=(2, 2), embed_dim=24, num_heads=(2, 4)
    ),
    # window 4 on 14x14 and 7x7 grids: timm pads to whole windows (and shifts in both stages)
    "swin_w4_padded_w2": lambda: create_model(
        "swin_tiny_patch2_window7_28", bits=2, depths=(2, 2), embed_dim=16, num_heads=(2, 2), window_size=4
    ),
    # per-head IRM: statistics per (image, head) in DeiT, per (window, head) in Swin (padded windows)
    "deit_w2_head": lambda: create_model(
        "deit_tiny_patch4_28", bits=2, irm_stat="head", depth=2, embed_dim=48, num_heads=3
    ),
    "swin_w2_head_padded": lambda: create_model(
        "swin_tiny_patch2_window7_28", bits=2, irm_stat="head", depths=(2, 2), embed_dim=16, num_heads=(2, 2),
        window_size=4,
    ),
}


@pytest.fixture(scope="module", params=list(MODELS))
def pair(request):
    torch.manual_seed(0)
    model = _lively(MODELS[request.param](), seed=len(request.param))
    return request.param, model, export.export_model(model)


def _capture(model, names):
    """Forward hooks: name -> (input, output) of each module."""
    seen, handles = {}, []
    for n in names:

        def hook(m, args, out, n=n):
            seen[n] = (args[0].detach(), out.detach())

        handles.append(model.get_submodule(n).register_forward_hook(hook))
    return seen, handles


def test_every_quantized_layer_has_equal_integer_accumulators_and_close_output(pair):
    name, model, im = pair
    lin = [op for op in im.graph if op["op"] in ("qlinear", "patch_embed")]
    atts = [op for op in im.graph if op["op"] == "attention"]
    acts = [f"{op['param']}.{a}_act" for op in atts for a in "qkvp"]
    seen, handles = _capture(model, [op["param"] for op in lin] + acts)
    x = _images(8, model, seed=7)
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    for op in lin:
        prm = im.params(op)
        xin, yt = (t.numpy() for t in seen[op["param"]])
        if op["op"] == "patch_embed":
            yt = yt.reshape(yt.shape[0], yt.shape[1], -1).transpose(0, 2, 1)
        y, ints = ref.run_op(im, op, {op["in"]: xin})
        scale = (prm["a_step"] * prm["w_step"]).astype(np.float64)
        acc_torch = np.rint((yt.astype(np.float64) - prm.get("bias", 0)) / scale)
        assert np.array_equal(ints["acc"], acc_torch), (name, op["param"])
        np.testing.assert_allclose(y, yt, rtol=1e-4, atol=1e-4 * np.abs(yt).max(), err_msg=op["param"])
    for op in atts:
        prm = im.params(op)
        qkv = seen[f"{op['param']}.qkv"][1].numpy()
        o_torch = seen[f"{op['param']}.proj"][0].numpy()
        out, ints = ref.run_op(im, op, {op["in"]: qkv})
        h = op["heads"]
        torch_codes = {}
        for a in "qkvp":
            xhat = seen[f"{op['param']}.{a}_act"][1].numpy()
            step, zp = prm[f"{a}_step"].reshape(h, 1, 1), prm[f"{a}_zp"].reshape(h, 1, 1)
            torch_codes[a] = np.rint(xhat / step).astype(np.int64) + zp
            agree = (torch_codes[a] == ints[a]).mean()
            # q and k pass the IRM (torch vs numpy float order): a code on a rounding
            # boundary may flip; v and (almost always) p agree exactly
            assert agree >= (1.0 if a == "v" else 0.999), (name, op["param"], a, agree)
        # q k^T of PyTorch's own codes, summed in int64 here, equals the reference's accumulator
        zq, zk = prm["q_zp"].reshape(h, 1, 1), prm["k_zp"].reshape(h, 1, 1)
        s_acc_torch = (torch_codes["q"] - zq) @ np.swapaxes(torch_codes["k"] - zk, -1, -2)
        assert (ints["s_acc"] == s_acc_torch).mean() >= 0.999, (name, op["param"])
        o_scale = (prm["p_step"] * prm["v_step"]).reshape(1, h, 1, 1).astype(np.float64)
        b, t = o_torch.shape[:2]
        o_acc_torch = np.rint(o_torch.reshape(b, t, h, -1).transpose(0, 2, 1, 3) / o_scale)
        assert (ints["o_acc"] == o_acc_torch).mean() >= 0.999, (name, op["param"])
        np.testing.assert_allclose(out, o_torch, rtol=1e-3, atol=1e-3 * np.abs(o_torch).max())


def test_whole_model_logits_close_and_top1_agrees(pair):
    name, model, im = pair
    x = _images(32, model, seed=11)
    with torch.no_grad():
        y = model(x).numpy()
    r = ref.run(im, x.numpy())
    # per image, largest logit difference relative to the logit scale. Float order differs
    # (torch's fake-quant float matmuls vs integer GEMM + epilogue), so a code can flip at a
    # rounding boundary somewhere and move one image's logits by a few percent; most images
    # agree to float32 rounding.
    err = np.abs(r - y).max(1) / np.abs(y).max()
    assert np.mean(err <= 1e-4) >= 0.9 and err.max() <= 0.5, (name, np.sort(err)[-4:])
    assert (r.argmax(1) == y.argmax(1)).mean() >= 0.9, name
    assert y.std(0).mean() > 0.1 * y.std(), name  # the test model's logits depend on the image


def test_exported_structure_follows_the_model(pair):
    name, model, im = pair
    qc = model.qvit_config.quant
    assert im.config["irm"] == qc.irm
    assert im.config["bits"] == {"weight": qc.w_bits, "act": qc.a_bits, "embed": 8, "head": 8}
    for op, prm in im.ops("attention"):
        assert op["irm"] == qc.irm and op.get("irm_stat", "token") == qc.irm_stat
        affine = {"token": "norm_q.weight", "head": "norm_q.gamma"}[qc.irm_stat]
        assert (affine in prm) == qc.irm
        if qc.irm and qc.irm_stat == "head":
            attn = model.get_submodule(op["param"])
            np.testing.assert_array_equal(prm["norm_k.beta"], attn.norm_k.beta.detach().numpy())
        assert op["bits"] == qc.a_bits
    for op, prm in im.ops("qlinear"):
        lo, hi = quant.weight_range(op["w_bits"])
        assert prm["weight"].min() >= lo and prm["weight"].max() <= hi
    if name.startswith("swin"):
        masks = 0
        for li, layer in enumerate(model.layers):
            for bi, blk in enumerate(layer.blocks):
                p = f"layers.{li}.blocks.{bi}.attn"
                prm = im.params(next(op for op in im.graph if op.get("param") == p))
                if blk.attn_mask is None:
                    assert "mask" not in prm
                else:
                    masks += 1
                    assert np.array_equal(prm["mask"], blk.attn_mask.numpy())
                np.testing.assert_array_equal(prm["rel_pos_bias"], blk.attn.rel_pos_bias().detach().numpy())
        assert masks >= 1
    if "distilled" in name:
        assert im.config["distilled"] and [op["op"] for op in im.graph][-1] == "average"


def test_full_precision_model_is_refused():
    fp = create_model("deit_tiny_patch4_28", depth=1, embed_dim=32, num_heads=2)
    with pytest.raises(export.ExportError, match="not quantized"):
        export.export_model(fp)


def test_checkpoint_export_keeps_classes_and_normalisation(tmp_path):
    from qvit.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = _lively(create_model("deit_tiny_patch4_28", bits=2, depth=1, embed_dim=32, num_heads=2), seed=1)
    classes = [f"class{i}" for i in range(10)]
    data = {"mean": [0.286], "std": [0.353], "classes": classes, "interpolation": "bilinear", "crop_pct": 1.0}
    save_checkpoint(tmp_path / "ck", model, {"model": model.qvit_config.to_json(), "data": data})
    out = tmp_path / "m.qvit.safetensors"
    r = subprocess.run(
        [sys.executable, "-m", "qvit", "export", str(tmp_path / "ck"), "--out", str(out), "--check", "6"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout
    assert "check on 6 images, against PyTorch:" in r.stdout, r.stdout
    assert "reference: top-1 agreement 100.00 %" in r.stdout, r.stdout
    im = IntModel.load(str(out))
    assert im.config["classes"] == classes
    assert im.config["input"]["mean"] == [0.286] and im.config["input"]["std"] == [0.353]
    x = _images(4, model, seed=3)
    with torch.no_grad():
        np.testing.assert_allclose(ref.run(im, x.numpy()), model(x).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--out", "X"], "give a checkpoint directory"),
        (
            ["--random", "--arch", "deit_tiny_patch4_28", "--out", "X"],
            "--random needs --arch NAME and --bits B",
        ),
        (
            ["--random", "--arch", "no_such_model", "--bits", "2", "--out", "X"],
            "unknown model 'no_such_model'",
        ),
        (["--random", "--arch", "deit_tiny_patch4_28", "--bits", "9", "--out", "X"], "--bits: must be 1..8"),
        (["CKPT_MISSING", "--out", "X"], "no checkpoint at"),
        (["CKPT_MISSING"], "nothing to do"),
        (
            ["--random", "--arch", "deit_tiny_patch4_28", "--bits", "2", "--out", "/no/such/dir/m.s"],
            "no such directory",
        ),
    ],
)
def test_cli_errors_are_one_line(tmp_path, monkeypatch, capsys, argv, message):
    from qvit.cli import main

    argv = [
        a.replace("X", str(tmp_path / "m.qvit.safetensors")).replace("CKPT_MISSING", str(tmp_path / "nock"))
        for a in argv
    ]
    monkeypatch.setattr(sys, "argv", ["qvit", "export", *argv])  # the verb registry reads argv[1]
    assert main(["export", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_cli_random_export_writes_a_valid_model(tmp_path):
    out = tmp_path / "r.qvit.safetensors"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "qvit",
            "export",
            "--random",
            "--arch",
            "swin_tiny_patch2_window7_28",
            "--bits",
            "2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    im = IntModel.load(str(out))
    assert im.family == "swin" and im.config["bits"]["weight"] == 2
    assert any("mask" in prm for _, prm in im.ops("attention"))
    logits = ref.run(im, np.zeros((1, *im.input_shape), np.float32))
    assert logits.shape == (1, 10) and np.isfinite(logits).all()
    assert json.loads(json.dumps(im.config)) == im.config


def test_check_uses_the_checkpoints_test_images_and_reports_agreement():
    import os

    if not os.path.exists("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"):
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    torch.manual_seed(0)
    model = _lively(create_model("deit_tiny_patch4_28", bits=2, depth=1, embed_dim=32, num_heads=2), seed=4)
    x, y = export.check_images({"train": {"data": "fashion-mnist"}}, model, 20)
    assert x.shape == (20, 1, 28, 28) and x.dtype == np.float32 and y.shape == (20,)
    assert abs(float(x.mean())) < 3 and set(y.tolist()) <= set(range(10))
    r = export.check_agreement(model, export.export_model(model), x, y)
    assert r["images"] == 20 and r["reference"]["top1_agreement"] >= 0.9
    assert 0 <= r["torch_top1"] <= 1 and 0 <= r["reference"]["top1"] <= 1
    assert "onnxruntime" not in r
