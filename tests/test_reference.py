"""The numpy integer reference (qvit_compile.intmodel.reference) against independent float computations
and timm."""

import numpy as np
import pytest

from qvit_compile import intmodel
from qvit_compile.intmodel import reference as ref
from qvit_edge import quant


@pytest.fixture(scope="module")
def swin():
    return intmodel.random_swin(bits=3, seed=5)


@pytest.fixture(scope="module")
def deit():
    return intmodel.random_deit(bits=2, distilled=True, seed=2)


@pytest.fixture(scope="module")
def deit_head():
    return intmodel.random_deit(bits=2, irm_stat="head", seed=6)


@pytest.fixture(scope="module")
def swin_head():
    return intmodel.random_swin(bits=3, irm_stat="head", seed=7)


def _model(which, deit, swin, deit_head, swin_head):
    return {"deit": deit, "swin": swin, "deit_head": deit_head, "swin_head": swin_head}[which]


def _images(n, shape=(1, 28, 28), seed=0):
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype(np.float32)


def test_trace_has_integer_side_of_every_quantized_op_and_same_logits(deit):
    x = _images(3)
    logits, tr = ref.run(deit, x, trace=True)
    assert np.array_equal(logits, ref.run(deit, x))
    quantized = [op for op in deit.graph if op["op"] in intmodel.QUANTIZED_OPS]
    assert set(tr.ints) == {op["out"] for op in quantized}
    for op in quantized:
        ints = tr.ints[op["out"]]
        if op["op"] == "attention":
            assert set(ints) == {"q", "k", "v", "s_acc", "p", "o_acc"}
            assert ints["s_acc"].dtype == np.int32 and ints["p"].max() <= 2 ** op["bits"] - 1
        else:
            assert ints["acc"].dtype == np.int32 and ints["a"].max() <= 2 ** op["a_bits"] - 1
    assert all(op["out"] in tr.values for op in deit.graph)


def test_qlinear_equals_dequantized_float_linear(deit):
    x = _images(2)
    _, tr = ref.run(deit, x, trace=True)
    op, prm = next(deit.ops("qlinear"))  # blocks.0.attn.qkv
    xin = tr.values[op["in"]]
    xhat = quant.dequantize_act(
        quant.quantize_act(xin, prm["a_step"], prm["a_zp"], op["a_bits"]), prm["a_step"], prm["a_zp"]
    )
    want = xhat.astype(np.float64) @ quant.dequantize_weight(prm["weight"], prm["w_step"]).T.astype(
        np.float64
    )
    want += prm["bias"]
    np.testing.assert_allclose(tr.values[op["out"]], want, rtol=1e-5, atol=1e-5)


def _float_attention(op, prm, qkv):
    """The attention of docs/integer-model.md written directly in float64 on dequantized operands."""
    h, d, bits = op["heads"], op["head_dim"], op["bits"]
    b, t, _ = qkv.shape
    q, k, v = qkv.astype(np.float64).reshape(b, t, 3, h, d).transpose(2, 0, 3, 1, 4)
    if op["irm"] and op.get("irm_stat") == "head":

        def hn(z, g, bb):  # mean and variance over each (item, head) block of T x d
            mu, var = z.mean((-2, -1), keepdims=True), z.var((-2, -1), keepdims=True)
            return (z - mu + bb[:, None]) / (g[:, None] * np.sqrt(var + op["eps"]))

        q, k = hn(q, prm["norm_q.gamma"], prm["norm_q.beta"]), hn(k, prm["norm_k.gamma"], prm["norm_k.beta"])
    elif op["irm"]:

        def ln(z, w, bb):
            return (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + op["eps"]) * w + bb

        q, k = (
            ln(q, prm["norm_q.weight"], prm["norm_q.bias"]),
            ln(k, prm["norm_k.weight"], prm["norm_k.bias"]),
        )

    def fq(z, a):
        s, zp = prm[f"{a}_step"].reshape(h, 1, 1), prm[f"{a}_zp"].reshape(h, 1, 1)
        return quant.dequantize_act(quant.quantize_act(z, s, zp, bits), s, zp).astype(np.float64)

    s = fq(q, "q") @ np.swapaxes(fq(k, "k"), -1, -2) * op["scale"]
    if "rel_pos_bias" in prm:
        s = s + prm["rel_pos_bias"]
    if "mask" in prm:
        nw = prm["mask"].shape[0]
        s = s + prm["mask"][np.arange(b) % nw][:, None]
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = fq(p, "p") @ fq(v, "v")
    return o.transpose(0, 2, 1, 3).reshape(b, t, h * d)


@pytest.mark.parametrize("which", ["deit", "swin", "deit_head", "swin_head"])
def test_attention_equals_float_formula_incl_rel_pos_bias_and_shift_mask(which, deit, swin, deit_head,
                                                                         swin_head):
    model = _model(which, deit, swin, deit_head, swin_head)
    x = _images(2)
    _, tr = ref.run(model, x, trace=True)
    checked_mask = False
    for op, prm in model.ops("attention"):
        got = tr.values[op["out"]]
        want = _float_attention(op, prm, tr.values[op["in"]].astype(np.float64))
        # a rounding-boundary flip of a probability code moves one output by one step; allow a few
        close = np.isclose(got, want, rtol=1e-4, atol=1e-4)
        assert close.mean() > 0.99, (op["param"], close.mean())
        checked_mask |= "mask" in prm
    assert checked_mask == which.startswith("swin")
    assert {op.get("irm_stat", "token") for op in model.graph if op["op"] == "attention"} == {
        "head" if which.endswith("head") else "token"
    }


def test_head_norm_sums_in_the_documented_order():
    """reference.head_sum: every row's numpy sum over d, then numpy's pairwise sum of the row sums of
    each (item, head) block as one contiguous 1-D vector (the order the compiled kernel reproduces),
    including T > 128 (pairwise blocks split) and d that is not a multiple of 8."""
    rng = np.random.default_rng(8)
    for b, t, h, d in [(2, 197, 3, 64), (3, 49, 2, 12), (1, 300, 2, 7)]:
        qkv = (rng.normal(size=(b, t, 3 * h * d)) * 3 + 1).astype(np.float32)
        q, _, _ = ref.split_qkv(qkv, h, d)
        got = ref.head_sum(q)
        for i in range(b):
            for j in range(h):
                rows = np.array([np.add.reduce(np.ascontiguousarray(r)) for r in q[i, j]], np.float32)
                assert got[i, j, 0, 0] == np.add.reduce(rows), (b, t, h, d)
        g = rng.uniform(0.5, 2, (h, d)).astype(np.float32)
        be = rng.normal(size=(h, d)).astype(np.float32)
        y = ref.head_norm(q, g, be, 1e-5)
        assert y.dtype == np.float32
        q64 = q.astype(np.float64)
        mu, var = q64.mean((-2, -1), keepdims=True), q64.var((-2, -1), keepdims=True)
        np.testing.assert_allclose(y, (q64 - mu + be[:, None]) / (g[:, None] * np.sqrt(var + 1e-5)),
                                   rtol=1e-4, atol=1e-5)


def test_shift_mask_matters(swin):
    x = _images(1)
    op, prm = next((o, p) for o, p in swin.ops("attention") if "mask" in p)
    _, tr = ref.run(swin, x, trace=True)
    out_masked, _ = ref.run_op(swin, op, tr.values)
    saved = swin.tensors.pop(f"{op['param']}.mask")
    try:
        out_unmasked, _ = ref.run_op(swin, op, tr.values)
    finally:
        swin.tensors[f"{op['param']}.mask"] = saved
    assert not np.allclose(out_masked, out_unmasked)


@pytest.mark.parametrize(
    "grid,window,shift", [((8, 8), 4, 2), ((7, 7), 4, 2), ((14, 14), 7, 3), ((4, 4), 4, 0)]
)
def test_window_partition_matches_timm_and_reverse_inverts_it(grid, window, shift):
    torch = pytest.importorskip("torch")
    swin = pytest.importorskip("timm.models.swin_transformer")
    rng = np.random.default_rng(0)
    b, c = 2, 3
    x = rng.normal(size=(b, grid[0] * grid[1], c)).astype(np.float32)
    ours = ref.window_partition(x, grid, window, shift)
    # timm's SwinTransformerBlock._attn: roll, pad, window_partition
    t = torch.from_numpy(x).view(b, *grid, c)
    t = torch.roll(t, shifts=(-shift, -shift), dims=(1, 2))
    hp, wp = intmodel.padded_grid(grid, window)
    t = torch.nn.functional.pad(t, (0, 0, 0, wp - grid[1], 0, hp - grid[0]))
    theirs = swin.window_partition(t, (window, window)).reshape(-1, window * window, c)
    assert np.array_equal(ours, theirs.numpy())
    assert np.array_equal(ref.window_reverse(ours, grid, window, shift), x)


@pytest.mark.parametrize("grid", [(4, 6), (7, 7)])
def test_patch_merge_matches_timm(grid):
    torch = pytest.importorskip("torch")
    swin = pytest.importorskip("timm.models.swin_transformer")
    c = 3
    pm = swin.PatchMerging(dim=c)
    pm.norm = torch.nn.Identity()
    pm.reduction = torch.nn.Identity()
    x = np.random.default_rng(1).normal(size=(2, grid[0] * grid[1], c)).astype(np.float32)
    theirs = pm(torch.from_numpy(x).view(2, *grid, c)).flatten(1, 2).numpy()
    assert np.array_equal(ref.patch_merge(x, grid), theirs)


def test_patches_equal_a_strided_convolution():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    img = rng.normal(size=(2, 3, 8, 12)).astype(np.float32)
    w = rng.normal(size=(5, 3, 4, 4)).astype(np.float32)
    conv = torch.nn.functional.conv2d(torch.from_numpy(img), torch.from_numpy(w), stride=4)
    theirs = conv.flatten(2).transpose(1, 2).numpy()
    ours = ref.patches(img, 4) @ w.reshape(5, -1).T
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_float_ops_match_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(4, 7, 33)) * 4).astype(np.float32)
    g = ref.gelu(x)
    tg = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(g, tg, rtol=2e-6, atol=1e-6)
    assert ref.gelu(np.float32([-30.0, 30.0]), clip=10.0).tolist() == [-0.0, 10.0]
    w, b = rng.normal(size=33).astype(np.float32), rng.normal(size=33).astype(np.float32)
    tl = torch.nn.functional.layer_norm(
        torch.from_numpy(x), (33,), torch.from_numpy(w), torch.from_numpy(b), 1e-6
    )
    np.testing.assert_allclose(ref.layernorm(x, w, b, 1e-6), tl.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        ref.softmax(x), torch.softmax(torch.from_numpy(x), -1).numpy(), rtol=1e-5, atol=1e-7
    )


def test_distilled_deit_averages_its_two_heads(deit):
    _, tr = ref.run(deit, _images(2), trace=True)
    np.testing.assert_allclose(tr.values["logits"], (tr.values["logits_cls"] + tr.values["logits_dist"]) / 2)


def test_random_models_are_sensibly_calibrated(swin):
    # codes use the whole range and the network does not collapse to one class on varied inputs
    x = _images(16, seed=9)
    logits, tr = ref.run(swin, x, trace=True)
    for name, ints in tr.ints.items():
        a = ints["a"] if "a" in ints else ints["q"]
        assert len(np.unique(a)) >= 2**3 // 2, name
    assert len(set(logits.argmax(1).tolist())) > 1


def test_wrong_input_shape_is_one_line(deit):
    with pytest.raises(intmodel.IntModelError, match=r"input must be \[B, 1, 28, 28\]"):
        ref.run(deit, np.zeros((1, 3, 28, 28), np.float32))


@pytest.mark.parametrize("a_bits,w_bits,z", [(2, 2, 1), (1, 1, 0), (4, 3, 9), (8, 8, 128), (8, 8, -70000)])
def test_fast_integer_sums_equal_quant_bit_for_bit(a_bits, w_bits, z):
    rng = np.random.default_rng(a_bits * 10 + w_bits)
    a = rng.integers(0, 2**a_bits, size=(37, 300)).astype(np.int32)
    w = rng.choice(quant.weight_levels(w_bits), size=(19, 300)).astype(np.int8)
    assert np.array_equal(ref.int_linear(a, z, w, a_bits, w_bits), quant.int_linear(a, z, w))
    b = rng.integers(0, 2**a_bits, size=(2, 3, 11, 300)).astype(np.int32)
    a4 = rng.integers(0, 2**a_bits, size=(2, 3, 7, 300)).astype(np.int32)
    za, zb = rng.integers(0, 2**a_bits, 3), rng.integers(0, 2**a_bits, 3)
    assert np.array_equal(ref.int_matmul_act(a4, za, b, zb, a_bits), quant.int_matmul_act(a4, za, b, zb))


@pytest.mark.parametrize("which", ["deit", "swin", "deit_head", "swin_head"])
def test_each_image_gets_the_same_logits_bit_for_bit_in_any_batch(which, deit, swin, deit_head, swin_head):
    model = _model(which, deit, swin, deit_head, swin_head)
    x = _images(5, seed=4)
    whole = ref.run(model, x)
    for i in range(5):
        assert np.array_equal(ref.run(model, x[i : i + 1])[0], whole[i])
