"""The shared quantization arithmetic (edge_runtime/quant.py)."""
import numpy as np
import pytest

from qvit_edge import quant


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_act_codes_stay_in_range_and_take_at_most_2b_levels(bits):
    rng = np.random.default_rng(bits)
    x = rng.normal(size=10000).astype(np.float32) * 3
    codes = quant.quantize_act(x, 0.1, quant.signed_zero_point(bits), bits)
    assert codes.min() >= 0 and codes.max() <= 2**bits - 1
    assert len(np.unique(codes)) <= 2**bits


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_weight_codes_take_at_most_2b_levels(bits):
    rng = np.random.default_rng(bits)
    w = rng.normal(size=(16, 64)).astype(np.float32)
    codes = quant.quantize_weight(w, np.full(16, 0.3, np.float32), bits)
    lo, hi = quant.weight_range(bits)
    assert codes.min() >= lo and codes.max() <= hi
    assert set(np.unique(codes)) <= set(quant.weight_levels(bits).tolist())
    if bits == 1:
        assert set(np.unique(codes)) == {-1, 1}


def test_rounding_is_half_to_even():
    codes = quant.quantize_act(np.array([0.5, 1.5, 2.5], np.float32), 1.0, 0, 4)
    assert codes.tolist() == [0, 2, 2]


def test_int_linear_equals_dequantized_float_matmul():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, size=(5, 37))
    w = rng.integers(-2, 2, size=(7, 37))
    s_a, s_w = np.float32(0.25), rng.uniform(0.1, 1, 7).astype(np.float32)
    acc = quant.int_linear(a, 1, w)
    ref = quant.dequantize_act(a, s_a, 1) @ quant.dequantize_weight(w, s_w).T
    np.testing.assert_allclose(acc * s_a * s_w, ref, rtol=1e-5, atol=1e-5)


def test_int_matmul_act_per_head_zero_points():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 8, size=(3, 6, 5))
    b = rng.integers(0, 8, size=(3, 4, 5))
    za, zb = np.array([0, 3, 7]), np.array([4, 4, 1])
    got = quant.int_matmul_act(a, za, b, zb)
    for h in range(3):
        np.testing.assert_array_equal(got[h], (a[h] - za[h]) @ (b[h] - zb[h]).T)


def test_accumulator_bound_fits_int32_at_deit_b_sizes():
    assert quant.max_abs_acc(3072, 4, 4) < 2**31 - 1
    assert quant.max_abs_acc(3072, 8, 8) < 2**31 - 1


def test_bad_bits_rejected():
    with pytest.raises(ValueError):
        quant.act_range(0)
