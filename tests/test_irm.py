"""IRM statistics (per token, per head) and their least-squares calibration: at the start of QAT the
rectified attention computes (nearly) the full-precision function."""
import os

import pytest
import torch

from qvit.attention import HeadNorm, calibrate_irm
from qvit.models import create_model
from qvit.models.deit import QuantAttention

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FP = os.path.join(ROOT, "models", "fmnist_deit_tiny_fp")
FMNIST = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"


def test_head_norm_uses_each_heads_statistics():
    torch.manual_seed(0)
    n = HeadNorm(heads=3, head_dim=4)
    x = torch.randn(2, 3, 5, 4) * torch.tensor([1.0, 10.0, 0.5]).view(1, 3, 1, 1) + 7.0
    y = n(x)
    # identity affine: every (image, head) block has mean 0 and variance 1 (up to eps)
    assert torch.allclose(y.mean(dim=(-2, -1)), torch.zeros(2, 3), atol=1e-5)
    assert torch.allclose(y.var(dim=(-2, -1), unbiased=False), torch.ones(2, 3), atol=1e-3)
    # the paper's parameterisation: (x - mu + beta) / (gamma sigma)
    with torch.no_grad():
        n.gamma.fill_(2.0)
        n.beta.fill_(0.5)
    mu = x.mean(dim=(-2, -1), keepdim=True)
    sigma = torch.sqrt(x.var(dim=(-2, -1), unbiased=False, keepdim=True) + n.eps)
    assert torch.allclose(n(x), (x - mu + 0.5) / (2.0 * sigma), atol=1e-5)


def test_head_norm_fit_reproduces_its_input():
    """When every image shares the head's statistics the fit is exact: the output is the input."""
    torch.manual_seed(1)
    base = torch.randn(1, 2, 6, 3)
    x = base.expand(4, -1, -1, -1) * 3.0 + 1.5
    n = HeadNorm(heads=2, head_dim=3)
    n.fit(x)
    assert torch.allclose(n(x), x, atol=1e-4)
    # varying statistics: the least-squares output is much closer to x than the identity affine's
    x = torch.randn(8, 2, 6, 3) * (2 + 0.3 * torch.rand(8, 1, 1, 1)) + 0.5
    err_identity = (HeadNorm(2, 3)(x) - x).pow(2).mean()
    n.fit(x)
    assert (n(x) - x).pow(2).mean() < 0.2 * err_identity


def test_calibration_leaves_quantizers_to_initialise_after_it():
    torch.manual_seed(0)
    m = create_model("deit_tiny_distilled_patch4_28", bits=4, irm_stat="head", depth=1, embed_dim=48)
    assert calibrate_irm(m, [torch.randn(4, 1, 28, 28)]) == 1
    flags = [int(q.initialized) for q in m.modules() if hasattr(q, "initialized")]
    assert flags and not any(flags)
    attn = m.blocks[0].attn
    assert isinstance(attn, QuantAttention) and attn.irm_calibration is None
    assert not torch.equal(attn.norm_q.gamma, torch.ones_like(attn.norm_q.gamma))


@pytest.mark.parametrize("arch,kw", [
    ("deit_tiny_distilled_patch4_28", {"depth": 1, "embed_dim": 48}),
    ("swin_tiny_patch2_window7_28", {"depths": (2, 1), "embed_dim": 16, "num_heads": (2, 2)}),
])
def test_per_head_irm_exports_and_the_reference_agrees_with_pytorch(arch, kw):
    from qvit.export import check_agreement, export_random

    im, model = export_random(arch, 2, irm_stat="head", **kw)
    ops = [op for op in im.graph if op["op"] == "attention"]
    assert ops and all(op["irm"] and op["irm_stat"] == "head" for op in ops)
    prm = im.params(ops[0])
    assert prm["norm_q.gamma"].shape == (ops[0]["heads"], ops[0]["head_dim"])
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(3)).numpy()
    r = check_agreement(model, im, x)["reference"]
    assert r["top1_agreement"] >= 0.9 and r["max_rel_logit_diff"] <= 0.5, r


def test_unknown_irm_statistic_is_refused():
    with pytest.raises(ValueError, match="unknown IRM statistic"):
        create_model("deit_tiny_distilled_patch4_28", bits=2, irm_stat="channel", depth=1, embed_dim=48)


@pytest.mark.slow
def test_before_qat_accuracy_with_calibrated_per_head_irm_is_within_a_point_of_no_irm():
    """W4A4 from the shipped full-precision model, quantizers initialised on one batch, 1000
    validation images (the last training images): per-head IRM, least-squares calibrated, must
    cost at most one point; the official per-token LayerNorm costs tens of points."""
    from qvit.data import load_dataset
    from qvit.train import evaluate, iterate

    if not os.path.exists(FMNIST):
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    torch.set_num_threads(2)
    train, val = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "val")

    def batches(n, seed):
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]
        return [x for x, _ in iterate(train, 28, 128, train=False, order=order)]

    acc = {}
    arms = (("none", {"irm": False}), ("token", {"irm_stat": "token"}), ("head", {"irm_stat": "head"}))
    for name, kw in arms:
        torch.manual_seed(0)
        m = create_model("deit_tiny_distilled_patch4_28", bits=4, init_from=FP, depth=4, embed_dim=96, **kw)
        if name != "none":
            calibrate_irm(m, batches(256, seed=0))
        m.train()
        with torch.no_grad():
            m(batches(128, seed=1)[0])  # the quantizers' data-dependent init, as `qvit train` does
        acc[name] = evaluate(m, val, 28, 256, 0, 1000, "cpu")["top1"]
    assert acc["head"] >= acc["none"] - 1.0, acc
    assert acc["token"] < acc["none"] - 10.0, acc


@pytest.mark.parametrize("stat", ["head", "token"])
def test_irm_affine_is_not_weight_decayed(stat):
    """The optimizer treats both IRM forms' affines as norms: no weight decay, whatever their rank
    (the per-head (gamma, beta) are [H, head_dim])."""
    from qvit.train import param_groups

    m = create_model("deit_tiny_distilled_patch4_28", bits=2, irm_stat=stat, depth=1, embed_dim=48)
    decay, no_decay = param_groups(m, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    attn = m.blocks[0].attn
    irm = {id(p) for n in (attn.norm_q, attn.norm_k) for p in n.parameters()}
    assert len(irm) == 4
    assert irm <= {id(p) for p in no_decay["params"]}
    assert id(attn.qkv.weight) in {id(p) for p in decay["params"]}
