"""The program pi_estimate runs under qemu-user with the block-counting plugin (native/tools/tb_count.c).

    python pi_estimate_guest.py MODEL THREADS SIDE_FILE

It runs inside the emulated Python (the device runtime only: qvit_edge, numpy, cffi; no qvit_compile),
so it imports nothing of this package. It loads the model, tells the plugin where every kernel starts
(a step boundary), counts exactly one inference of a fixed random image, and writes what the host needs
to attribute the counts: the plan's steps, the kernels' addresses and this process's memory map.
"""
from __future__ import annotations

import ctypes
import json
import os
import sys

TBC_SYSCALL = 0x5156  # the plugin's command channel: a system call number no kernel has
START, STOP, ENTRY = 1, 2, 3


def main() -> int:
    path, threads, side = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    import numpy as np

    from qvit_edge import model as qmodel

    m = qmodel.Model(path, threads=threads)
    steps = m.steps
    # The same handle the runtime opened (dlopen of a loaded path): kernel addresses as executed.
    lib = ctypes.CDLL(os.path.abspath(path), mode=os.RTLD_NOW | os.RTLD_LOCAL)
    n = ctypes.c_int32.in_dll(lib, "qvit_model_num_kernels").value
    kernels = [int(a or 0) for a in (ctypes.c_void_p * n).in_dll(lib, "qvit_model_kernels")]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    for addr in sorted(set(kernels)):
        libc.syscall(ctypes.c_long(TBC_SYSCALL), ctypes.c_long(ENTRY), ctypes.c_ulong(addr))
    x = np.random.default_rng(0).standard_normal((1,) + tuple(m.input_shape)).astype(np.float32)
    libc.syscall(ctypes.c_long(TBC_SYSCALL), ctypes.c_long(START))
    m.run(x)
    libc.syscall(ctypes.c_long(TBC_SYSCALL), ctypes.c_long(STOP))
    with open("/proc/self/maps") as f:  # qemu-user shows the guest's mappings
        maps = f.read()
    doc = {"model": os.path.abspath(path), "threads": threads, "kernels": kernels,
           "steps": [{"kernel": int(s["kernel"]), "kind": s["kind"]} for s in steps], "maps": maps}
    with open(side, "w") as f:
        json.dump(doc, f)
    m.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
