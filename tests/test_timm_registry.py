"""Q-ViT models in timm's registry (qvit/models/timm_registry.py): built by timm.create_model, with
a pretrained_cfg that describes the model's real input, a head timm resets, local weights only."""
import os

import pytest
import timm
import torch
from timm.data import resolve_data_config

import qvit  # noqa: F401  (registers the qvit_* names)
from qvit.models import list_models
from qvit.quantizers import QuantLinear

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FP_WEIGHTS = os.path.join(ROOT, "models", "fmnist_deit_tiny_fp", "model.safetensors")


def test_every_architecture_is_registered_under_qvit_():
    assert sorted(timm.list_models("qvit_*")) == sorted("qvit_" + a for a in list_models())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted("qvit_" + a for a in list_models()))
def test_timm_builds_every_registered_name(name):
    """Each name builds through timm; the 224 px ones with one block per stage (their full depth
    only costs time: a DeiT-B takes minutes of initialisation on a 2-core CI machine)."""
    torch.manual_seed(0)
    short = {}
    if name.endswith("_224"):
        short = {"depths": (1, 1, 1, 1)} if "swin" in name else {"depth": 1}
    m = timm.create_model(name, bits=2, **short).eval()
    cfg = resolve_data_config(model=m)
    assert m.qvit_config.quant.w_bits == 2 and isinstance(m.blocks[0].attn.qkv if hasattr(m, "blocks")
                                                          else m.layers[0].blocks[0].attn.qkv, QuantLinear)
    c, h, w = cfg["input_size"]
    assert len(cfg["mean"]) == len(cfg["std"]) == c
    if h <= 32:  # the small models really run; the 224 px ones are checked for their config only
        with torch.no_grad():
            out = m(torch.randn(2, c, h, w))
        assert out.shape == (2, m.pretrained_cfg["num_classes"])


def test_the_28px_models_say_they_take_one_channel_at_28px():
    m = timm.create_model("qvit_deit_tiny_patch4_28")
    assert resolve_data_config(model=m) == {"input_size": (1, 28, 28), "interpolation": "bilinear",
                                            "mean": (0.286,), "std": (0.353,), "crop_pct": 1.0,
                                            "crop_mode": "center"}
    assert m.qvit_config.quant.w_bits == 4  # a qvit_ name without bits: 4 bits


def test_num_classes_resets_the_head_and_the_cfg_follows_the_overrides():
    m = timm.create_model("qvit_deit_tiny_patch4_28", bits=3, num_classes=5, in_chans=3)
    assert m.head.out_features == 5 and m.pretrained_cfg["num_classes"] == 5
    assert m.pretrained_cfg["input_size"] == (3, 28, 28) and len(m.pretrained_cfg["mean"]) == 3
    assert m.qvit_config.quant.a_bits == 3


def test_pretrained_takes_a_local_file_and_never_downloads():
    with pytest.raises(ValueError, match="no pretrained weights can be downloaded"):
        timm.create_model("qvit_deit_tiny_patch4_28", pretrained=True)
    m = timm.create_model("qvit_deit_tiny_distilled_patch4_28", pretrained=True, bits=2, depth=4,
                          embed_dim=96, pretrained_cfg_overlay=dict(file=FP_WEIGHTS))
    from safetensors.torch import load_file

    fp = load_file(FP_WEIGHTS)
    assert torch.equal(m.blocks[3].mlp.fc2.weight, fp["blocks.3.mlp.fc2.weight"])
    assert "file" not in m.pretrained_cfg
