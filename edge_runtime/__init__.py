"""qvit_edge: the device runtime. Needs only numpy, cffi and Pillow (and the project's native library).

    import qvit_edge
    m = qvit_edge.load("model.so", threads=4)
    m.predict("shirt.jpg")       # [Prediction(index=6, label='Shirt', prob=0.91), ...]

(qvit_edge/api.py; docs/runtime.md.) The API is imported on first use, so `qvit-edge --help` and the
training side's use of qvit_edge.clikit stay light.
"""
__version__ = "0.1.0"

_API = ("load", "ImageClassifier", "Prediction", "InputError")


def __getattr__(name):
    if name in _API:
        from qvit_edge import api

        return getattr(api, name)
    raise AttributeError(f"module 'qvit_edge' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))
