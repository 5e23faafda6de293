"""The Python API (qvit_edge/api.py): `qvit_edge.load(path).predict(image)` and `.run(x)` on a real
compiled model.so, against the command line and the numpy integer reference."""
import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import qvit_edge
from qvit_compile.intmodel import reference
from qvit_edge.api import InputError, Prediction, normalized_bound

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]


@pytest.fixture(scope="module")
def built(api_model):
    """(model.so path, integer model) of a tiny random DeiT with class names, for this machine
    (conftest.py: compiled once a session)."""
    return api_model


@pytest.fixture(scope="module")
def frames():
    """Four Fashion-MNIST test images as uint8 [28, 28]."""
    if not os.path.exists(FMNIST):
        pytest.skip(f"{FMNIST} missing (Debian package dataset-fashion-mnist)")
    with gzip.open(FMNIST) as f:
        return np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:4].copy()


def test_load_predict_and_run_agree_with_the_reference(built, frames, tmp_path):
    path, im = built
    with qvit_edge.load(path, threads=2) as m:
        assert m.input_spec.size == (28, 28) and m.classes == CLASSES and m.num_classes == 10
        assert "deit" in repr(m)
        x = np.stack([m.prepare(f) for f in frames])
        logits = m.run(x)
        want = np.concatenate([reference.run(im, x[i:i + 1]) for i in range(len(x))])
        np.testing.assert_allclose(logits, want, atol=1e-4)
        top = m.predict(frames[0], topk=3)
        assert len(top) == 3 and all(isinstance(p, Prediction) for p in top)
        assert top[0].index == int(np.argmax(logits[0])) and top[0].label == CLASSES[top[0].index]
        assert top[0].prob >= top[1].prob >= top[2].prob and 0 < sum(p.prob for p in top) <= 1 + 1e-9


def test_every_kind_of_image_gives_the_same_answer(built, frames, tmp_path):
    path, _ = built
    png = tmp_path / "0.png"
    Image.fromarray(frames[0], "L").save(png)
    with qvit_edge.load(path) as m:
        want = m.predict(str(png))
        rgb = np.repeat(frames[0][..., None], 3, -1)
        for image in (png, Image.open(png), frames[0], frames[0][..., None], rgb):
            assert m.predict(image) == want, type(image)
        assert m.predict(m.prepare(frames[0]), normalized=True) == want
        # a batch is one list per image, in order, equal to the single calls
        singles = [want, m.predict(frames[1]), m.predict(frames[2])]
        assert m.predict([str(png), frames[1], frames[2]]) == singles


def test_the_command_line_prints_what_predict_returns(built, frames, tmp_path):
    path, _ = built
    png = tmp_path / "1.png"
    Image.fromarray(frames[1], "L").save(png)
    r = subprocess.run([sys.executable, "-m", "qvit_edge", "run", path, str(png), "--json", "--topk", "4"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    cli = json.loads(r.stdout)["results"][0]["top"]
    with qvit_edge.load(path) as m:
        api = m.predict(str(png), topk=4)
    assert [(t["index"], t["class"], t["prob"]) for t in cli] == [tuple(p) for p in api]


def test_wrong_inputs_are_value_errors_that_say_what_was_expected(built, frames):
    path, _ = built
    with qvit_edge.load(path) as m:
        cases = [
            (lambda: m.run(frames[0][None]), "normalised float input, got dtype uint8"),  # raw camera frame
            (lambda: m.run(np.zeros((2, 3, 28, 28), np.float32)), "takes [N, 1, 28, 28]"),
            (lambda: m.run(np.full((1, 1, 28, 28), np.nan, np.float32)), "NaN"),
            (lambda: m.run(frames[:1, None].astype(np.float32)), "were these raw pixels"),  # 0..255 floats
            (lambda: m.predict(frames[0].astype(np.float32)), "pass normalized=True"),
            (lambda: m.predict(frames[0].astype(np.int32)), "uint8"),
            (lambda: m.predict(np.zeros((28, 28, 2), np.uint8)), "[H, W, 1|3|4]"),
            (lambda: m.predict(np.zeros((1, 28, 28), np.float32), normalized=False), "pass normalized=True"),
            (lambda: m.predict(np.zeros((2, 1, 28, 28), np.float32), normalized=True), "one [C, H, W]"),
            (lambda: m.predict(frames[0], topk=0), "topk"),
            (lambda: m.predict([]), "empty"),
            (lambda: m.predict(42), "not int"),
        ]
        for call, needle in cases:
            with pytest.raises(ValueError) as e:
                call()
            assert isinstance(e.value, InputError) and needle in str(e.value), (needle, str(e.value))
            assert "\n" not in str(e.value)
    # the low-level executor refuses raw pixels too
    from qvit_edge import model

    with model.load(path) as low:
        with pytest.raises(model.ModelError, match="got dtype uint8"):
            low.run(frames[:1, None])


def test_a_bad_file_or_thread_count_is_one_line(built, tmp_path):
    from qvit_edge.clikit import UserError

    (tmp_path / "x.so").write_text("not a model\n")
    with pytest.raises(UserError, match="not a shared library"):
        qvit_edge.load(tmp_path / "x.so")
    with pytest.raises(UserError, match="--threads 0"):
        qvit_edge.load(built[0], threads=0)


def test_normalized_bound_is_the_extreme_prepared_pixel(built):
    with qvit_edge.load(built[0]) as m:
        spec = m.input_spec
        black = m.prepare(np.zeros((28, 28), np.uint8))
        white = m.prepare(np.full((28, 28), 255, np.uint8))
        peak = max(np.abs(black).max(), np.abs(white).max())
        assert peak == pytest.approx(normalized_bound(spec), rel=1e-5)


def test_importing_qvit_edge_stays_light():
    code = "import sys, qvit_edge; print(sorted(m for m in ('numpy', 'PIL', 'cffi') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr
