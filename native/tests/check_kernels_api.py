"""qvit_edge.kernels against quant.py on every path this machine runs, with numpy only (no
pytest): for an interpreter without the dev tools, e.g. the aarch64 Python under qemu
(tests/test_kernels_native.py), where it checks the NEON and SDOT paths through the Python API.
Exit status 0 = all exact."""
from __future__ import annotations

import sys

import numpy as np

from qvit_edge import kernels as K
from qvit_edge import quant


def main() -> int:
    rng = np.random.default_rng(1)
    bad = checks = 0
    for path in K.paths():
        K.set_path(path)
        for ab in (1, 2, 3, 4, 8):
            for wb in (1, 2, 4, 8):
                for m, n, k in ((1, 1, 1), (5, 17, 130), (9, 33, 64)):
                    a = rng.integers(0, 1 << ab, (m, k))
                    za = int(rng.integers(0, 1 << ab))
                    w = rng.choice(quant.weight_levels(wb), (n, k))
                    b = rng.integers(0, 1 << wb, (n, k))
                    zb = int(rng.integers(0, 1 << wb))
                    for engine in K.ENGINES:
                        got = K.int_linear(a, za, w, ab, wb, engine=engine)
                        got2 = K.int_matmul_act(a, za, b, zb, ab, wb, engine=engine)
                        wants = (quant.int_linear(a, za, w), quant.int_matmul_act(a, za, b, zb))
                        for g, want in zip((got, got2), wants):
                            checks += 1
                            if not np.array_equal(g, want):
                                bad += 1
                                print(f"FAIL {path} {engine} a{ab} w{wb} {m}x{n}x{k}")
        x = rng.normal(0, 2, (3, 50)).astype(np.float32)
        checks += 1
        if not np.array_equal(K.quantize(x, 0.25, 3, 4), quant.quantize_act(x, 0.25, 3, 4)):
            bad += 1
            print(f"FAIL {path} quantize")
    print(f"paths {' '.join(K.paths())}: {checks} checks, {bad} failures")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
