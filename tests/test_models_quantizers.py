"""Quantizers, IRM and the integer form of the quantized layers (qvit/quantizers.py, qvit/attention.py)."""

import numpy as np
import pytest
import torch

from qvit.models.deit import QuantAttention
from qvit.quantizers import ActQuant, QuantConv2d, QuantLinear, WeightQuant, set_grad_scale
from qvit_edge import quant

torch.manual_seed(0)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_quantized_weights_take_at_most_2b_levels_and_match_quant_py(bits):
    w = torch.randn(16, 40)
    wq = WeightQuant(bits, 16)
    w_hat = wq(w)
    for n in range(16):
        assert len(torch.unique(w_hat[n])) <= 2**bits
    codes = wq.int_codes(w)
    assert set(np.unique(codes).tolist()) <= set(quant.weight_levels(bits).tolist())
    np.testing.assert_array_equal(codes, quant.quantize_weight(w.numpy(), wq.step.detach().numpy(), bits))
    np.testing.assert_array_equal(
        w_hat.detach().numpy(), quant.dequantize_weight(codes, wq.step.detach().numpy())
    )


@pytest.mark.parametrize("bits", [1, 2, 4])
@pytest.mark.parametrize("channels", [None, 3])
def test_act_quant_forward_equals_quant_py(bits, channels):
    x = torch.randn(5, 3, 7, 4) * 2 + 0.3
    aq = ActQuant(bits, channels=channels)
    aq(x)  # data-dependent init
    with torch.no_grad():
        aq.step.mul_(0.77)
        aq.offset.add_(0.4)
    p = aq.int_params()
    assert p["step"].dtype == np.float32 and p["zp"].dtype == np.int32 and p["bits"] == bits
    assert p["step"].shape == (() if channels is None else (3,))
    shape = (1, 3, 1, 1) if channels else ()
    step, zp = p["step"].reshape(shape), p["zp"].reshape(shape)
    ref = quant.dequantize_act(quant.quantize_act(x.numpy(), step, zp, bits), step, zp)
    np.testing.assert_array_equal(aq(x).detach().numpy(), ref)
    assert len(torch.unique(aq(x))) <= 2**bits * (channels or 1)


def test_act_quant_init_signed_and_unsigned():
    pos, mixed = ActQuant(3), ActQuant(3)
    pos(torch.rand(100))
    mixed(torch.randn(100))
    assert pos.int_params()["zp"] == 0
    assert mixed.int_params()["zp"] == 4


def test_gradients_reach_steps_offsets_and_weights():
    lin = QuantLinear(8, 4, w_bits=2, a_bits=2)
    x = torch.randn(32, 8) * 3  # wide enough that some inputs clip, so the offset gets gradient
    lin(x)
    lin.zero_grad()
    lin(x).pow(2).sum().backward()
    for name, p in [
        ("weight", lin.weight),
        ("w_step", lin.w_quant.step),
        ("a_step", lin.a_quant.step),
        ("a_offset", lin.a_quant.offset),
        ("bias", lin.bias),
    ]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_one_bit_weights_are_plus_minus_one_with_gradient():
    lin = QuantLinear(8, 4, w_bits=1, a_bits=1)
    x = torch.randn(16, 8)
    lin(x).sum().backward()
    assert set(np.unique(lin.int_form()["weight"]).tolist()) == {-1, 1}
    assert lin.weight.grad.abs().sum() > 0 and lin.w_quant.step.grad.abs().sum() > 0


@pytest.mark.parametrize("w_bits,a_bits", [(1, 1), (2, 2), (3, 4), (8, 8)])
def test_int_form_of_linear_equals_fake_quant_forward(w_bits, a_bits):
    lin = QuantLinear(24, 10, w_bits=w_bits, a_bits=a_bits)
    x = torch.randn(3, 5, 24)
    with torch.no_grad():
        y = lin(x).numpy()
    f = lin.int_form()
    assert f["weight"].dtype == np.int8 and f["weight"].shape == (10, 24)
    assert f["w_step"].dtype == np.float32 and f["w_step"].shape == (10,)
    assert f["a_step"].shape == () and f["a_zp"].dtype == np.int32
    a = quant.quantize_act(x.numpy(), f["a_step"], f["a_zp"], a_bits).reshape(-1, 24)
    acc = quant.int_linear(a, f["a_zp"], f["weight"])
    y_int = (f["a_step"] * f["w_step"] * acc + f["bias"]).reshape(3, 5, 10)
    np.testing.assert_allclose(y_int, y, rtol=1e-5, atol=1e-5)


def test_int_form_of_patch_embedding_equals_conv():
    conv = QuantConv2d(2, 6, patch=4, w_bits=8, a_bits=8)
    x = torch.randn(2, 2, 8, 12)
    with torch.no_grad():
        y = conv(x).flatten(2).transpose(1, 2).numpy()  # [B, Hp*Wp, N]
    f = conv.int_form()
    assert f["patch"] == 4 and f["weight"].shape == (6, 2 * 16)
    # [B, C, Hp, kh, Wp, kw] -> [B, Hp, Wp, C, kh, kw]: patches row-major, vector order (c, kh, kw)
    patches = x.numpy().reshape(2, 2, 2, 4, 3, 4).transpose(0, 2, 4, 1, 3, 5).reshape(2 * 6, 32)
    a = quant.quantize_act(patches, f["a_step"], f["a_zp"], 8)
    acc = quant.int_linear(a, f["a_zp"], f["weight"])
    y_int = (f["a_step"] * f["w_step"] * acc + f["bias"]).reshape(2, 6, 6)
    np.testing.assert_allclose(y_int, y, rtol=1e-4, atol=1e-4)


def attention_from_int_form(f: dict, x: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """The `attention` op of docs/integer-model.md from an int_form, in numpy (qkv and proj included)."""
    B, T, C = x.shape
    H, d = f["heads"], f["head_dim"]

    def linear(lf, inp):
        a = quant.quantize_act(inp, lf["a_step"], lf["a_zp"], lf["a_bits"]).reshape(-1, inp.shape[-1])
        out = lf["a_step"] * lf["w_step"] * quant.int_linear(a, lf["a_zp"], lf["weight"])
        if lf["bias"] is not None:
            out = out + lf["bias"]
        return out.reshape(*inp.shape[:-1], -1).astype(np.float32)

    qkv = linear(f["qkv"], x).reshape(B, T, 3, H, d).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv
    if f["irm"] is not None:
        r = f["irm"]

        def ln(t, w, b):
            mu = t.mean(-1, keepdims=True)
            var = ((t - mu) ** 2).mean(-1, keepdims=True)
            return (t - mu) / np.sqrt(var + r["eps"]) * w + b

        q, k = ln(q, r["q_weight"], r["q_bias"]), ln(k, r["k_weight"], r["k_bias"])
    hs = lambda p: p.reshape(1, H, 1, 1)  # noqa: E731
    qc, kc, vc = (
        quant.quantize_act(t, hs(f[n]["step"]), hs(f[n]["zp"]), f[n]["bits"])
        for t, n in ((q, "q"), (k, "k"), (v, "v"))
    )
    S = (
        f["scale"]
        * hs(f["q"]["step"] * f["k"]["step"])
        * quant.int_matmul_act(qc, f["q"]["zp"][None, :], kc, f["k"]["zp"][None, :])
    )
    if f["rel_pos_bias"] is not None:
        S = S + f["rel_pos_bias"][None]
    if bias is not None:
        S = S + bias
    P = np.exp(S - S.max(-1, keepdims=True))
    P = P / P.sum(-1, keepdims=True)
    pc = quant.quantize_act(P, hs(f["p"]["step"]), hs(f["p"]["zp"]), f["p"]["bits"])
    O = hs(f["p"]["step"] * f["v"]["step"]) * quant.int_matmul_act(
        pc, f["p"]["zp"][None, :], np.swapaxes(vc, -1, -2), f["v"]["zp"][None, :]
    )
    return linear(f["proj"], O.transpose(0, 2, 1, 3).reshape(B, T, H * d))


@pytest.mark.parametrize("bits,irm", [(2, True), (4, False), (3, True)])
def test_int_form_of_attention_equals_fake_quant_forward(bits, irm):
    attn = QuantAttention(32, 4, 8, True, bits, bits, irm=irm)
    x = torch.randn(2, 9, 32)
    attn(x)  # init the quantizers
    if irm:
        with torch.no_grad():
            attn.norm_q.weight.uniform_(0.5, 1.5)
            attn.norm_k.bias.uniform_(-0.3, 0.3)
    with torch.no_grad():
        y = attn(x).numpy()
    f = attn.int_form()
    assert f["q"]["step"].shape == (4,) and f["p"]["zp"].shape == (4,)
    assert (f["irm"] is not None) == irm
    np.testing.assert_allclose(attention_from_int_form(f, x.numpy()), y, rtol=2e-4, atol=2e-4)


def test_irm_output_has_the_learned_mean_and_scale():
    attn = QuantAttention(16, 2, 8, True, 4, 4, irm=True)
    attn.record_qk = True
    with torch.no_grad():
        attn.norm_q.weight.fill_(2.5)
        attn.norm_q.bias.fill_(-0.7)
        attn.qkv.weight.mul_(5)
        attn.qkv.bias.add_(3)
    attn(torch.randn(3, 10, 16))
    q, k = attn.recorded_qk
    torch.testing.assert_close(q.mean(-1), torch.full(q.shape[:-1], -0.7), atol=1e-4, rtol=0)
    torch.testing.assert_close(q.std(-1, unbiased=False), torch.full(q.shape[:-1], 2.5), atol=1e-2, rtol=0)
    torch.testing.assert_close(k.mean(-1), torch.zeros(k.shape[:-1]), atol=1e-4, rtol=0)


def test_gradients_reach_irm_and_attention_quantizers():
    attn = QuantAttention(16, 2, 8, True, 2, 2, irm=True)
    x = torch.randn(4, 10, 16)
    attn(x)
    attn(x).pow(2).sum().backward()
    for name in (
        "norm_q.weight",
        "norm_q.bias",
        "norm_k.weight",
        "norm_k.bias",
        "q_act.step",
        "k_act.step",
        "v_act.step",
        "p_act.step",
        "qkv.w_quant.step",
    ):
        p = attn.get_parameter(name)
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_a_step_driven_below_zero_keeps_the_integer_form_exact():
    lin = QuantLinear(8, 3, w_bits=2, a_bits=2)
    x = torch.randn(4, 8)
    lin(x)
    with torch.no_grad():
        lin.a_quant.step.fill_(-0.5)
        lin.w_quant.step[0] = 0.0
        y = lin(x).numpy()
    assert np.isfinite(y).all()
    f = lin.int_form()
    assert f["a_step"] > 0 and (f["w_step"] > 0).all()
    a = quant.quantize_act(x.numpy(), f["a_step"], f["a_zp"], 2)
    y_int = f["a_step"] * f["w_step"] * quant.int_linear(a, f["a_zp"], f["weight"]) + f["bias"]
    np.testing.assert_allclose(y_int, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels", [None, 3])
def test_fused_act_quant_gradients_equal_the_composed_straight_through_ops(channels):
    from qvit.quantizers import grad_scale, round_ste

    torch.manual_seed(0)
    x = (torch.randn(4, 3, 5, 6) * 2).requires_grad_()
    aq = ActQuant(2, channels=channels)
    aq(x)
    with torch.no_grad():
        aq.offset.add_(0.3)
    y = aq(x)
    gy = torch.randn_like(y)
    gx, gs, go = torch.autograd.grad(y, (x, aq.step, aq.offset), gy)
    # the same quantizer written as plain autograd ops (clip, then straight-through round)
    x2 = x.detach().clone().requires_grad_()
    step, off = aq.step.detach().clone().requires_grad_(), aq.offset.detach().clone().requires_grad_()
    n = x2[0].numel() // (channels or 1)
    g = 1.0 / (n * 3) ** 0.5
    shape = (1, 3, 1, 1) if channels else ()
    s = grad_scale(step, g).reshape(shape)
    z = grad_scale(round_ste(off.clamp(0, 3)), g).reshape(shape)
    y2 = (round_ste(torch.clamp(x2 / s + z, 0, 3)) - z) * s  # LSQ+ as the official code writes it
    gx2, gs2, go2 = torch.autograd.grad(y2, (x2, step, off), gy)
    assert torch.equal(y.detach(), y2.detach())
    torch.testing.assert_close(gx, gx2)
    torch.testing.assert_close(gs, gs2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(go, go2, rtol=1e-5, atol=1e-6)
    assert go.abs().sum() > 0 and gs.abs().sum() > 0


def test_official_lsq_gradient_scale_counts_the_whole_batch_and_weight():
    """--lsq-grad-scale batch: g = 1/sqrt(x.numel() Qp) with the batch (and w.numel() over every
    output channel), so the step's gradient is sqrt(B) (sqrt(N_out)) times smaller than per sample."""
    torch.manual_seed(0)
    x = torch.randn(8, 5, 12)
    w = torch.randn(6, 12)
    grads = {}
    for mode in ("sample", "batch"):
        aq, wq = ActQuant(3), WeightQuant(3, 6)
        aq.init_from(x)
        wq.init_from(w)
        assert set_grad_scale(torch.nn.Sequential(aq, wq), mode) == 2
        (aq(x).sum() + wq(w).pow(2).sum()).backward()
        grads[mode] = (aq.step.grad.clone(), wq.step.grad.clone())
    torch.testing.assert_close(grads["batch"][0], grads["sample"][0] / 8 ** 0.5)
    torch.testing.assert_close(grads["batch"][1], grads["sample"][1] / 6 ** 0.5)
    with pytest.raises(ValueError):
        set_grad_scale(ActQuant(2), "token")
