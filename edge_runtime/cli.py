"""`qvit-edge`: run a compiled model.so on the device (run / bench / eval / info)."""
from __future__ import annotations

import sys

from qvit_edge import __version__
from qvit_edge.clikit import Verb
from qvit_edge.clikit import main as _main

VERBS = [
    Verb("run", "qvit_edge.cmd_run", "classify images with a compiled model.so", "issue #6"),
    Verb("bench", "qvit_edge.cmd_bench", "latency / throughput / memory benchmark of a model.so", "issue #6"),
    Verb("eval", "qvit_edge.cmd_eval", "top-1 / top-5 accuracy of a model.so on an ImageFolder tree",
         "issue #6"),
    Verb("info", "qvit_edge.cmd_info",
         "show what a model.so holds (arch, bits, target, classes)", "issue #6"),
]


def main(argv=None) -> int:
    return _main("qvit-edge", "Run low-bit Q-ViT models compiled by qvit-edge on an edge device.",
                 VERBS, __version__, argv)


if __name__ == "__main__":
    sys.exit(main())
