"""Guest addresses -> (module, function), and what a block is for (pi_estimate).

The guest wrote its /proc/self/maps (qemu-user shows the guest's own mappings, with the host paths
of the files). An address falls in a file mapping; its file offset goes through the ELF program
headers to the ELF address, and the nearest function symbol (.symtab, else .dynsym) below it names it.
"""
from __future__ import annotations

import bisect
import os
import re
import struct

# What a block is for, from its module and function:
#   "work": the model's kernels and what they call (model.so, the runtime's native library, libc, libm)
#   "sync": the thread pool waiting or waking threads (spins and futexes: time that depends on the
#           emulator's scheduling, not on the model; left out of the estimate, shown apart)
#   "overhead": the Python interpreter and the modules it runs (numpy, cffi): the runtime's overhead
_SYSTEM = re.compile(r"^(libc|libm|ld-linux[^/]*|libgcc_s|libpthread)[.-]")
_SYNC = re.compile(r"^(qv_pool_|worker_main|wait_for_run|now_ns|ensure_workers|after_fork|pthread_|__pthread|"
                   r"sched_yield|__sched_yield|__lll_|lll_|futex|__futex|__GI___futex|clone|__clone|create_thread|"
                   r"start_thread|__nptl)")


def _elf_symbols(path: str):
    """-> (loads [(p_offset, p_vaddr, p_filesz)], sorted [(st_value, size, name)]) of functions."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return [], []
    phoff, shoff = struct.unpack_from("<QQ", data, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 0x36)
    loads = []
    for i in range(phnum):
        at = phoff + i * phentsize
        p_type, _fl, p_offset, p_vaddr, _pa, p_filesz = struct.unpack_from("<IIQQQQ", data, at)
        if p_type == 1:
            loads.append((p_offset, p_vaddr, p_filesz))
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    syms = {}
    for want in (2, 11):  # SHT_SYMTAB first (all functions), SHT_DYNSYM (exported) fills in
        for sh in sections:
            if sh[1] != want:
                continue
            strtab = sections[sh[6]]
            str_off = strtab[4]
            for k in range(sh[5] // 24):
                st_name, st_info, _o, shndx, value, size = struct.unpack_from("<IBBHQQ", data, sh[4] + k * 24)
                if (st_info & 0xF) not in (2, 10) or shndx == 0 or value == 0:  # FUNC / IFUNC, defined
                    continue
                end = data.index(b"\0", str_off + st_name)
                syms.setdefault(value, (size, data[str_off + st_name:end].decode("utf-8", "replace")))
    return loads, sorted((v, s, n) for v, (s, n) in syms.items())


class AddressMap:
    def __init__(self, maps_text: str, model_path: str):
        self.model = os.path.realpath(model_path)
        self._ranges = []  # (start, end, file offset, path)
        for line in maps_text.splitlines():
            parts = line.split(None, 5)
            if len(parts) < 6 or not parts[5].startswith("/"):
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            self._ranges.append((lo, hi, int(parts[2], 16), parts[5].strip()))
        self._ranges.sort()
        self._starts = [r[0] for r in self._ranges]
        self._elf: dict = {}

    def _symbols(self, path):
        if path not in self._elf:
            try:
                self._elf[path] = _elf_symbols(path)
            except (OSError, struct.error, ValueError):
                self._elf[path] = ([], [])
        return self._elf[path]

    def lookup(self, addr: int) -> tuple:
        """-> (module path or "?", function name or "?")."""
        i = bisect.bisect_right(self._starts, addr) - 1
        if i < 0 or addr >= self._ranges[i][1]:
            return "?", "?"
        lo, _hi, off, path = self._ranges[i]
        file_off = addr - lo + off
        loads, syms = self._symbols(path)
        for p_off, p_vaddr, p_filesz in loads:
            if p_off <= file_off < p_off + p_filesz:
                vaddr = file_off - p_off + p_vaddr
                break
        else:
            return path, "?"
        k = bisect.bisect_right(syms, (vaddr, float("inf"), "")) - 1
        return path, (syms[k][2] if k >= 0 else "?")

    def category(self, module: str, func: str) -> str:
        """"work", "sync" or "overhead" (see above)."""
        base = os.path.basename(module)
        if os.path.realpath(module) == self.model:
            return "work"
        if base.startswith("_native"):  # the runtime's native library (backend, thread pool)
            return "sync" if _SYNC.match(func) else "work"
        if _SYSTEM.match(base):
            return "sync" if _SYNC.match(func) else "work"
        return "overhead"
