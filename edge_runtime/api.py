"""The Python API: `qvit_edge.load(path).predict(image)`.

    import qvit_edge
    with qvit_edge.load("model.so", threads=4) as m:
        m.predict("shirt.jpg")               # [Prediction(index=6, label='Shirt', prob=0.91), ...]
        m.predict(frame)                      # a camera frame: uint8 [H, W, 3] (or [H, W] gray)
        m.predict(x, normalized=True)         # float32 [C, H, W] already prepared as m.input_spec says
        m.predict(["a.png", "b.png"])         # a batch: one list of predictions per image
        logits = m.run(batch)                 # float32 [N, C, H, W] normalised -> [N, num_classes]

What an array holds is said, never guessed: uint8 arrays are pixels (resized, cropped and
normalised as the model's metadata says, like an image file), float arrays are taken only with
`normalized=True` (they must already be prepared), and `run` takes only prepared float input.
Anything else is a ValueError that says what was expected. This is also what `qvit-edge run`
uses, so the API and the command line give the same answer for the same image.
"""
from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from qvit_edge.model import ModelError
from qvit_edge.preprocess import ImageError, InputSpec, load_image, preprocess


class InputError(ModelError, ValueError):
    """An input of the wrong kind, dtype, shape or range (one line)."""


class Prediction(NamedTuple):
    index: int
    label: str
    prob: float


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k(logits: np.ndarray, k: int, classes: list) -> list[Prediction]:
    """The k most probable classes of one image's logits, most probable first (ties: lower index)."""
    probs = softmax(logits)
    order = np.argsort(-probs, kind="stable")[:k]
    return [Prediction(int(i), classes[i] if i < len(classes) else str(int(i)), float(probs[i]))
            for i in order]


def normalized_bound(spec: InputSpec) -> float:
    """The largest |value| a prepared image can hold: pixels in [0, 1] through (x - mean) / std."""
    return max(max(abs(0.0 - m), abs(1.0 - m)) / s for m, s in zip(spec.mean, spec.std))


class ImageClassifier:
    """A loaded model.so with its input spec and class names. Not thread-safe: one call at a time."""

    def __init__(self, model, path: str):
        self._model = model
        self.path = path
        self.meta: dict = model.meta
        self.input_spec = InputSpec.from_meta(model.meta)
        self.classes: list = list(model.meta.get("classes") or [])
        self.num_classes = int(model.meta.get("num_classes") or len(self.classes))

    # ------------------------------------------------------------------ raw logits
    def run(self, x) -> np.ndarray:
        """Prepared float input [N, C, H, W] (or one [C, H, W]) -> logits float32 [N, num_classes]."""
        x = self._check_prepared(x, "run()")
        return self._model.run(x)

    def _check_prepared(self, x, who: str) -> np.ndarray:
        a = np.asarray(x)
        if a.dtype.kind != "f":
            hint = " (raw pixels go to predict(), which prepares them)" if a.dtype == np.uint8 else ""
            raise InputError(f"{who} takes normalised float input, got dtype {a.dtype}{hint}")
        c, h, w = self._model.input_shape
        if a.ndim == 3:
            a = a[None]
        if a.ndim != 4 or tuple(a.shape[1:]) != (c, h, w):
            raise InputError(f"{who} takes [N, {c}, {h}, {w}] or [{c}, {h}, {w}], got {list(a.shape)}")
        if a.shape[0] == 0:
            raise InputError(f"{who}: an empty batch")
        if not np.isfinite(a).all():
            raise InputError(f"{who}: the input holds NaN or Inf")
        bound = normalized_bound(self.input_spec)
        peak = float(np.abs(a).max())
        if peak > 1.5 * bound + 1e-3:
            raise InputError(f"{who}: values up to {peak:.3g}, but a prepared image lies within "
                             f"+-{bound:.3g} ((pixel / 255 - mean) / std); were these raw pixels?")
        return a.astype(np.float32, copy=False)

    # ------------------------------------------------------------------ images
    def prepare(self, image, normalized: bool = False) -> np.ndarray:
        """One image (path, PIL image, uint8 pixels, or prepared float with normalized=True) ->
        float32 [C, H, W] as run() takes it."""
        from PIL import Image

        spec = self.input_spec
        if isinstance(image, (str, bytes, os.PathLike)):
            if normalized:
                raise InputError("normalized=True is for float arrays, not files")
            return load_image(os.fsdecode(image), spec)
        if isinstance(image, Image.Image):
            if normalized:
                raise InputError("normalized=True is for float arrays, not PIL images")
            return preprocess(image, spec, "image")
        if not isinstance(image, np.ndarray):
            raise InputError(f"an image is a path, a PIL image or a numpy array, not {type(image).__name__}")
        if normalized:
            if image.ndim != 3:
                raise InputError(f"predict(normalized=True) takes one [C, H, W] image (a list of them "
                                 f"for a batch; run() takes [N, C, H, W]), got {list(image.shape)}")
            return self._check_prepared(image, "predict(normalized=True)")[0]
        if image.dtype.kind == "f":
            raise InputError("a float array must already be prepared: pass normalized=True "
                             "(or give uint8 pixels, which are prepared as an image file is)")
        if image.dtype != np.uint8:
            raise InputError(f"pixels must be uint8 [H, W] or [H, W, 1|3|4], got dtype {image.dtype}")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)) \
                or min(image.shape[:2]) < 1:
            raise InputError(f"pixels must be [H, W] or [H, W, 1|3|4] (HWC, as a camera gives), "
                             f"got {list(image.shape)}")
        return preprocess(Image.fromarray(np.ascontiguousarray(image)), spec, "frame")

    def predict(self, image, topk: int = 5, normalized: bool = False):
        """Top-k classes with softmax probabilities: a list of Prediction for one image, or one such
        list per image for a list/tuple of images (run as one batch)."""
        if not isinstance(topk, int) or isinstance(topk, bool) or topk < 1:
            raise InputError(f"topk must be a whole number >= 1, got {topk!r}")
        many = isinstance(image, (list, tuple))
        images = list(image) if many else [image]
        if not images:
            raise InputError("predict() got an empty list of images")
        x = np.stack([self.prepare(im, normalized) for im in images])
        logits = self._model.run(x)
        k = min(topk, self.num_classes or topk)
        out = [top_k(row, k, self.classes) for row in logits]
        return out if many else out[0]

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        self._model.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        c, h, w = self._model.input_shape
        return (f"ImageClassifier({self.path!r}, arch={self.meta.get('arch')!r}, input=[{c}, {h}, {w}], "
                f"classes={self.num_classes}, threads={self._model.threads})")


def load(path, threads: int = 1, profile: bool = False) -> ImageClassifier:
    """Check and load a model.so (the same checks as `qvit-edge info`); a bad file, a model built for
    another CPU or a bad thread count raises a qvit_edge.model.ModelError / UserError with one line."""
    from qvit_edge.preflight import check_threads, open_model

    path = os.fsdecode(path)
    return ImageClassifier(open_model(path, threads=check_threads(threads), profile=profile), path)


__all__ = ["load", "ImageClassifier", "Prediction", "InputError", "ImageError", "softmax", "top_k"]
