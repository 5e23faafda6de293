"""The integer model file (qvit_compile.intmodel): round trip, interop, one-line errors."""

import json
import struct
import subprocess
import sys

import numpy as np
import pytest

from qvit_compile import intmodel
from qvit_compile.intmodel import IntModel, IntModelError


@pytest.fixture(scope="module")
def deit():
    return intmodel.random_deit(bits=2, distilled=True, seed=3)


def test_round_trip_keeps_config_and_every_tensor_bit_for_bit(deit, tmp_path):
    path = tmp_path / "m.qvit.safetensors"
    deit.save(str(path))
    back = IntModel.load(str(path))
    assert back.config == deit.config
    assert set(back.tensors) == set(deit.tensors)
    for k, v in deit.tensors.items():
        assert back.tensors[k].dtype == v.dtype and back.tensors[k].shape == v.shape
        assert np.array_equal(back.tensors[k], v), k
    assert back.digest() == deit.digest()


def test_files_interoperate_with_the_safetensors_library(deit, tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    path = str(tmp_path / "m.qvit.safetensors")
    deit.save(path)
    theirs = st.load_file(path)
    assert set(theirs) == set(deit.tensors)
    assert all(np.array_equal(theirs[k], deit.tensors[k]) for k in theirs)
    # and the other way: a file written by safetensors reads back here
    path2 = str(tmp_path / "theirs.safetensors")
    st.save_file(dict(deit.tensors), path2, metadata={"qvit": json.dumps(deit.config)})
    assert IntModel.load(path2).digest() == deit.digest()


def test_digest_changes_when_a_code_changes(deit):
    other = IntModel(json.loads(json.dumps(deit.config)), {k: v.copy() for k, v in deit.tensors.items()})
    w = other.tensors["blocks.0.mlp.fc1.weight"]
    w[0, 0] = -w[0, 0] - 1 if w[0, 0] >= 0 else 0
    assert other.digest() != deit.digest()


def test_shapes_cover_every_activation(deit):
    shapes = deit.shapes()
    assert shapes["logits"] == (deit.num_classes,)
    assert shapes["tokens"][0] == shapes["patch_embed"][0] + 2  # cls + dist
    assert all(op["out"] in shapes for op in deit.graph)


def test_ops_iterates_an_op_with_its_tensors(deit):
    ops = list(deit.ops("attention"))
    assert len(ops) == 2
    op, prm = ops[0]
    assert prm["q_step"].shape == (op["heads"],) and "norm_q.weight" in prm
    _, lin = next(deit.ops("patch_embed"))
    assert lin["weight"].dtype == np.int8 and lin["a_zp"].shape == ()


@pytest.fixture(scope="module")
def deit_head():
    return intmodel.random_deit(bits=2, irm_stat="head", seed=4)


def test_per_head_irm_round_trips_with_its_statistic_and_head_by_channel_affine(deit, deit_head, tmp_path):
    path = str(tmp_path / "h.qvit.safetensors")
    deit_head.save(path)
    back = IntModel.load(path)
    assert back.config == deit_head.config and back.digest() == deit_head.digest()
    op, prm = next(back.ops("attention"))
    assert op["irm"] and op["irm_stat"] == "head"
    h, d = op["heads"], op["head_dim"]
    for a in "qk":
        assert prm[f"norm_{a}.gamma"].shape == (h, d) and prm[f"norm_{a}.beta"].shape == (h, d)
        assert f"norm_{a}.weight" not in prm
    # a per-token model keeps its old layout: no irm_stat field (absent means "token")
    assert all("irm_stat" not in op for op in deit.graph)


def _set_irm_stat(stat):
    def edit(c):
        for op in c["graph"]:
            if op["op"] == "attention":
                op["irm_stat"] = stat

    return edit


@pytest.mark.parametrize(
    "head,edit_config,edit_tensors,message",
    [
        (False, _set_irm_stat("channel"), None, "irm_stat='channel' is not one of token, head"),
        (False, _set_irm_stat(True), None, "irm_stat=True is not one of token, head"),
        (False, _set_irm_stat("token"), None, None),  # explicit "token" is the default
        (False, _set_irm_stat("head"), None, "missing tensor 'blocks.0.attn.norm_q.gamma'"),
        (True, _set_irm_stat("token"), None, "missing tensor 'blocks.0.attn.norm_q.weight'"),
        (
            True,
            None,
            lambda t: t.update({"blocks.1.attn.norm_k.beta": t["blocks.1.attn.norm_k.beta"][0].copy()}),
            "has shape [16], expected [2, 16]",
        ),
        (
            True,
            None,
            lambda t: t.update({"blocks.0.attn.norm_q.gamma": t["blocks.0.attn.norm_q.gamma"].astype("f2")}),
            "is float16, expected float32",
        ),
    ],
)
def test_irm_statistic_and_its_tensors_are_checked(deit, deit_head, tmp_path, head, edit_config, edit_tensors,
                                                   message):
    model = deit_head if head else deit
    path = _save_broken(model, tmp_path / "bad.qvit.safetensors", edit_config, edit_tensors)
    if message is None:
        IntModel.load(path)
        return
    with pytest.raises(IntModelError) as e:
        IntModel.load(path)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def _save_broken(model, path, edit_config=None, edit_tensors=None):
    config = json.loads(json.dumps(model.config))
    tensors = dict(model.tensors)
    if edit_config:
        edit_config(config)
    if edit_tensors:
        edit_tensors(tensors)
    intmodel.write_safetensors(str(path), tensors, {"qvit": json.dumps(config)})
    return str(path)


@pytest.mark.parametrize(
    "edit_config,edit_tensors,message",
    [
        (lambda c: c.update(format_version=99), None, "unknown integer model format_version 99"),
        (lambda c: c.update(format="onnx"), None, "not a qvit integer model"),
        (lambda c: c.pop("graph"), None, "config lacks 'graph'"),
        (
            lambda c: c["graph"].append({"op": "conv3d", "in": "logits", "out": "y"}),
            None,
            "unknown op 'conv3d'",
        ),
        (lambda c: c["graph"][0].pop("patch"), None, "missing field(s) patch"),
        (None, lambda t: t.pop("blocks.1.attn.q_step"), "missing tensor 'blocks.1.attn.q_step'"),
        (
            None,
            lambda t: t.update({"blocks.0.mlp.fc2.weight": t["blocks.0.mlp.fc2.weight"].astype(np.float32)}),
            "is float32, expected int8",
        ),
        (
            None,
            lambda t: t.update({"blocks.0.attn.k_zp": np.zeros(5, np.int32)}),
            "has shape [5], expected [2]",
        ),
        (
            None,
            lambda t: t.update({"head.weight": np.full_like(t["head.weight"], 127) + 0}),
            None,
        ),  # 127 is a valid 8-bit head code: no error
        (
            None,
            lambda t: t.update({"blocks.0.mlp.fc1.weight": np.full_like(t["blocks.0.mlp.fc1.weight"], 3)}),
            "weight codes outside the 2-bit range",
        ),
        (
            None,
            lambda t: t.update({"blocks.0.mlp.fc2.weight": t["blocks.0.mlp.fc2.weight"][:, :-1].copy()}),
            "weight expects K=63",
        ),
    ],
)
def test_bad_models_fail_with_one_line(deit, tmp_path, edit_config, edit_tensors, message):
    path = _save_broken(deit, tmp_path / "bad.qvit.safetensors", edit_config, edit_tensors)
    if message is None:
        IntModel.load(path)
        return
    with pytest.raises(IntModelError) as e:
        IntModel.load(path)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).startswith(path)


def test_one_bit_weights_may_not_be_zero(tmp_path):
    m = intmodel.random_deit(bits=1, depth=1, seed=1)
    assert set(np.unique(m.tensors["blocks.0.mlp.fc1.weight"])) == {-1, 1}
    bad = m.tensors["blocks.0.mlp.fc1.weight"].copy()
    bad[0, 0] = 0
    path = _save_broken(
        m, tmp_path / "b.qvit.safetensors", edit_tensors=lambda t: t.update({"blocks.0.mlp.fc1.weight": bad})
    )
    with pytest.raises(IntModelError, match="outside the 1-bit range"):
        IntModel.load(path)


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "too short"),
        (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all", "header is not a JSON object"),
        (struct.pack("<Q", 1 << 40) + b"{}", "bad header length"),
        (b"GIF89a" + bytes(100), "bad header length"),
    ],
)
def test_not_safetensors_files_fail_with_one_line(tmp_path, content, message):
    p = tmp_path / "x.qvit.safetensors"
    p.write_bytes(content)
    with pytest.raises(IntModelError, match=message):
        IntModel.load(str(p))


def test_truncated_and_missing_files(deit, tmp_path):
    p = tmp_path / "m.qvit.safetensors"
    deit.save(str(p))
    blob = p.read_bytes()
    p.write_bytes(blob[: len(blob) - 100])
    with pytest.raises(IntModelError, match="truncated file"):
        IntModel.load(str(p))
    with pytest.raises(IntModelError, match="no such file"):
        IntModel.load(str(tmp_path / "nope.qvit.safetensors"))
    with pytest.raises(IntModelError, match="is a directory"):
        IntModel.load(str(tmp_path))


def test_a_plain_safetensors_file_is_not_an_integer_model(tmp_path):
    p = str(tmp_path / "plain.safetensors")
    intmodel.write_safetensors(p, {"w": np.zeros(3, np.float32)}, {})
    with pytest.raises(IntModelError, match="not a qvit integer model"):
        IntModel.load(p)


def test_reader_needs_only_numpy():
    code = (
        "import sys, qvit_compile.intmodel, qvit_compile.intmodel.reference\n"
        "print(sorted(m for m in ('torch', 'timm', 'tvm', 'safetensors') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "[]", r.stderr


@pytest.mark.parametrize(
    "grid,window,shift", [((8, 8), 4, 2), ((7, 7), 4, 2), ((6, 10), (3, 5), (1, 2)), ((8, 4), (4, 4), (2, 0))]
)
def test_shift_window_mask_equals_timm(grid, window, shift):
    torch = pytest.importorskip("torch")
    swin = pytest.importorskip("timm.models.swin_transformer")
    blk = swin.SwinTransformerBlock(
        dim=8, input_resolution=grid, num_heads=2, window_size=window, shift_size=shift, always_partition=True
    )
    theirs = blk.attn_mask
    ours = intmodel.shift_window_mask(grid, window, shift)
    assert theirs is not None
    assert ours.shape == tuple(theirs.shape)
    assert np.array_equal(ours, theirs.to(torch.float32).numpy())
    assert intmodel.shift_window_mask(grid, window, 0) is None
