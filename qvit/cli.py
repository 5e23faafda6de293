"""`qvit`: the training side (train / eval / export / ops)."""
from __future__ import annotations

import sys

from qvit import __version__
from qvit_edge.clikit import Verb
from qvit_edge.clikit import main as _main

VERBS = [
    Verb("train", "qvit.cmd_train",
         "train full precision, or QAT a fully quantized Q-ViT from it", "issue #3"),
    Verb("eval", "qvit.cmd_eval", "top-1 / top-5 of a checkpoint on a data set", "issue #3"),
    Verb("export", "qvit.cmd_export",
         "export a checkpoint: integer model for the compiler, or ONNX (QDQ)", "issue #3"),
    Verb("ops", "qvit.cmd_ops", "FLOPs, BOPs, OPs and theoretical speed-up of a quantized model", "issue #3"),
]


def main(argv=None) -> int:
    return _main("qvit", "Train, evaluate and export fully quantized low-bit vision transformers (Q-ViT).",
                 VERBS, __version__, argv)


if __name__ == "__main__":
    sys.exit(main())
