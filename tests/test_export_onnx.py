"""`qvit export --onnx`: a standard QDQ ONNX model that ONNX Runtime runs and that agrees with the
fake-quant PyTorch model (and the integer reference)."""

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from test_export import MODELS, _images, _lively  # noqa: E402

from qvit import export, export_onnx  # noqa: E402
from qvit_compile.intmodel import reference as ref  # noqa: E402

# (model, integer types its Q/DQ must use): low-bit codes in low-bit ONNX types
CASES = {
    "deit_w2_irm": {"INT2", "UINT4"},
    "deit_distilled_w3_noirm": {"INT4", "UINT4"},
    "deit_w1": {"INT2", "UINT4"},
    "swin_w4_padded_w2": {"INT2", "UINT4"},
    "deit_w2_head": {"INT2", "UINT4"},
    "swin_w2_head_padded": {"INT2", "UINT4"},
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    torch.manual_seed(0)
    model = _lively(MODELS[request.param](), seed=len(request.param))
    im = export.export_model(model)
    return request.param, model, im, export_onnx.intmodel_to_onnx(im)


def _session(om):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(om.SerializeToString(), so, providers=["CPUExecutionProvider"])


def test_onnx_runtime_agrees_with_pytorch_and_the_reference(case):
    name, model, im, om = case
    x = _images(32, model, seed=11)
    with torch.no_grad():
        y = model(x).numpy()
    o = _session(om).run(None, {"image": x.numpy()})[0]
    err = np.abs(o - y).max(1) / np.abs(y).max()
    assert np.mean(err <= 1e-4) >= 0.9 and err.max() <= 0.5, (name, np.sort(err)[-4:])
    assert (o.argmax(1) == y.argmax(1)).mean() >= 0.9
    r = ref.run(im, x.numpy())
    assert (o.argmax(1) == r.argmax(1)).mean() >= 0.9


def test_every_quantized_operand_is_a_qdq_pair_in_a_low_bit_type(case):
    name, _, im, om = case
    types = set()
    inits = {t.name: t for t in om.graph.initializer}
    q_nodes = [n for n in om.graph.node if n.op_type == "QuantizeLinear"]
    for n in om.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            codes_or_zp = n.input[2] if n.op_type == "QuantizeLinear" else n.input[0]
            if codes_or_zp in inits:
                types.add(onnx.TensorProto.DataType.Name(inits[codes_or_zp].data_type))
    assert CASES[name] <= types, types
    # one QuantizeLinear per quantized linear input, four per attention (q, k, v, p)
    n_lin = sum(op["op"] in ("qlinear", "patch_embed") for op in im.graph)
    n_att = sum(op["op"] == "attention" for op in im.graph)
    assert len(q_nodes) == n_lin + 4 * n_att
    assert not any(
        n.op_type in ("MatMul", "Conv") and n.input[1] in inits for n in om.graph.node
    )  # no float W


def test_cli_writes_onnx(tmp_path, monkeypatch, capsys):
    from qvit.cli import main

    out = tmp_path / "m.onnx"
    argv = [
        "export",
        "--random",
        "--arch",
        "deit_tiny_patch4_28",
        "--bits",
        "2",
        "--onnx",
        str(out),
        "--check",
        "4",
    ]
    monkeypatch.setattr(sys, "argv", ["qvit", *argv])
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "QDQ ONNX (opset 25)" in stdout
    assert "onnxruntime: top-1 agreement 100.00 %" in stdout, stdout
    om = onnx.load(str(out))
    o = _session(om).run(None, {"image": np.zeros((2, 1, 28, 28), np.float32)})[0]
    assert o.shape == (2, 10) and np.isfinite(o).all()
