"""Module surgery and the registry: timm DeiT / Swin -> fully quantized Q-ViT (qvit/surgery.py, models/)."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from test_models_quantizers import attention_from_int_form

from qvit.models import create_model, list_models
from qvit.models.deit import QuantAttention
from qvit.models.swin import QuantWindowAttention
from qvit.quantizers import ActQuant, QuantConv2d, QuantLinear
from qvit.surgery import ClippedGELU
from qvit_edge.clikit import UserError

TINY_DEIT = dict(depth=2, embed_dim=32, num_heads=2)
TINY_SWIN = dict(
    img_size=16,
    patch_size=2,
    window_size=4,
    in_chans=1,
    num_classes=10,
    depths=(2, 2),
    num_heads=(2, 4),
    embed_dim=16,
)


def test_registry_has_the_paper_backbones_and_small_variants():
    names = list_models()
    for n in (
        "deit_tiny_patch16_224",
        "deit_small_patch16_224",
        "deit_base_patch16_224",
        "deit_small_distilled_patch16_224",
        "swin_tiny_patch4_window7_224",
        "swin_small_patch4_window7_224",
        "deit_tiny_patch4_28",
        "swin_tiny_patch2_window7_28",
    ):
        assert n in names
    with pytest.raises(ValueError):
        create_model("qvit_resnet50")


def test_deit_surgery_quantizes_every_block_layer_and_keeps_timm_names():
    m = create_model("qvit_deit_tiny_distilled_patch4_28", bits=3, irm=True, **TINY_DEIT)
    assert isinstance(m.patch_embed.proj, QuantConv2d) and m.patch_embed.proj.w_bits == 8
    assert isinstance(m.head, QuantLinear) and m.head.w_bits == 8 and m.head.a_bits == 8
    assert isinstance(m.head_dist, QuantLinear) and m.head_dist.a_bits == 8
    for blk in m.blocks:
        assert isinstance(blk.attn, QuantAttention) and blk.attn.norm_q is not None
        assert blk.attn.qkv.w_bits == 3 and blk.attn.proj.a_bits == 3 and blk.attn.p_act.bits == 3
        assert isinstance(blk.mlp.fc1, QuantLinear) and isinstance(blk.mlp.fc2, QuantLinear)
        assert isinstance(blk.mlp.act, ClippedGELU) and blk.mlp.act.clip == 10.0
        assert hasattr(blk, "norm1") and hasattr(blk, "norm2")
    assert m.cls_token.shape[1] == 1 and m.dist_token is not None
    m.train()
    cls, dist = m(torch.randn(2, 1, 28, 28))
    assert cls.shape == dist.shape == (2, 10)
    m.eval()
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_irm_and_clip_can_be_switched_off_and_bits_set_separately():
    m = create_model("qvit_deit_tiny_patch4_28", w_bits=1, a_bits=2, irm=False, gelu_clip=None, **TINY_DEIT)
    a = m.blocks[0].attn
    assert a.norm_q is None and a.qkv.w_bits == 1 and a.qkv.a_bits == 2 and a.q_act.bits == 2
    assert m.blocks[0].mlp.act.clip is None


def test_full_precision_weights_load_from_a_local_file(tmp_path):
    fp = create_model("deit_tiny_patch4_28", **TINY_DEIT)
    path = tmp_path / "fp.safetensors"
    save_file({k: v.contiguous() for k, v in fp.state_dict().items()}, str(path))
    q = create_model("qvit_deit_tiny_patch4_28", bits=4, init_from=str(path), **TINY_DEIT)
    torch.testing.assert_close(q.blocks[1].attn.qkv.weight, fp.blocks[1].attn.qkv.weight)
    torch.testing.assert_close(q.pos_embed, fp.pos_embed)
    # a timm-style torch checkpoint ({"model": state_dict}) loads too, with weights_only=True
    pth = tmp_path / "fp.pth"
    torch.save({"model": fp.state_dict()}, str(pth))
    q2 = create_model("qvit_deit_tiny_patch4_28", bits=4, init_from=str(pth), **TINY_DEIT)
    torch.testing.assert_close(q2.head.weight, fp.head.weight)
    with pytest.raises(UserError):
        create_model("qvit_deit_tiny_patch4_28", bits=4, init_from=str(path), **{**TINY_DEIT, "depth": 3})


def test_swin_surgery_keeps_windows_shifts_and_masks():
    m = create_model(
        "qvit_swin_tiny_patch2_window7_28",
        bits=2,
        **{**TINY_SWIN, "img_size": 16, "window_size": 4, "patch_size": 2},
    )
    blk = m.layers[0].blocks[1]
    assert isinstance(blk.attn, QuantWindowAttention)
    assert blk.shift_size == (2, 2) and blk.attn_mask is not None and blk.attn_mask.shape == (4, 16, 16)
    assert isinstance(m.layers[1].downsample.reduction, QuantLinear)
    assert isinstance(m.head.fc, QuantLinear) and m.head.fc.w_bits == 8
    assert m(torch.randn(2, 1, 16, 16)).shape == (2, 10)


def test_quantized_swin_at_8_bits_tracks_full_precision_so_masks_and_bias_are_applied():
    torch.manual_seed(0)
    fp = create_model("swin_tiny_patch2_window7_28", **TINY_SWIN)
    with torch.no_grad():  # make the relative position bias and the shift mask matter
        for layer in fp.layers:
            for blk in layer.blocks:
                blk.attn.relative_position_bias_table.normal_(0, 1.0)
                blk.attn.qkv.weight.mul_(10)
    q = create_model("qvit_swin_tiny_patch2_window7_28", bits=8, irm=False, gelu_clip=None, **TINY_SWIN)
    q.load_state_dict(fp.state_dict(), strict=False)
    x = torch.randn(4, 1, 16, 16)
    fp.eval(), q.eval()
    q(x)  # calibrate
    with torch.no_grad():
        h = fp.layers[0].blocks[0](fp.patch_embed(x))
        h = fp.layers[0].blocks[1].norm1(h)  # input of the shifted-window attention branch

        def shifted_branch(m):
            return m.layers[0].blocks[1]._attn(h)

        ref, got = shifted_branch(fp), shifted_branch(q)
        # the same model with the shift mask dropped differs much more than quantization noise
        q.layers[0].blocks[1].attn_mask = None
        no_mask = shifted_branch(q)
    err = (got - ref).abs().mean() / ref.abs().mean()
    assert err < 0.15  # 8-bit LSQ-initialised quantizers, untrained
    assert (no_mask - ref).abs().mean() / ref.abs().mean() > 2 * err


def test_int_form_of_window_attention_with_shift_mask():
    m = create_model("qvit_swin_tiny_patch2_window7_28", bits=3, **TINY_SWIN)
    blk = m.layers[0].blocks[1]
    x = torch.randn(8, 16, 16)  # 2 images x 4 windows
    blk.attn(x, blk.attn_mask)
    with torch.no_grad():
        y = blk.attn(x, blk.attn_mask).numpy()
    f = blk.attn.int_form()
    assert f["rel_pos_bias"].shape == (2, 16, 16)
    mask = blk.attn_mask.numpy()  # window i of batch row b' is b' % nW
    got = attention_from_int_form(f, x.numpy(), bias=np.tile(mask, (2, 1, 1))[:, None])
    np.testing.assert_allclose(got, y, rtol=2e-4, atol=2e-4)


def test_every_quantizer_is_initialised_by_one_forward():
    m = create_model("qvit_deit_tiny_patch4_28", bits=2, **TINY_DEIT)
    m(torch.randn(2, 1, 28, 28))
    assert all(bool(a.initialized) for a in m.modules() if isinstance(a, ActQuant))
