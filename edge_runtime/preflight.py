"""Checks a model.so before anything loads it: the file, its ELF structure, the model it holds.

Loading a shared library runs its code (constructors), and a library that is for another CPU, not
a library at all, or damaged fails with a loader message nobody can act on, an abort or a crash.
So the file is read as plain bytes first and each way it can be wrong gets its own one-line error:

    not a regular file (a FIFO, a device, a directory): refused before it is opened
    missing / empty / unreadable
    not an ELF file (with a hint when it is an integer model or a checkpoint instead)
    32-bit or big-endian ELF, an executable or object file rather than a shared library
    built for another CPU ("built for aarch64, this machine is x86_64")
    a broken loadable image: program headers, segments, the dynamic section or relocations outside
      the file, or relocations of another CPU (the loader would read garbage or abort)
    a shared library that does not export the qvit model symbols (docs/model-so.md)

verify_model_file then checks the model in it, still without loading it: the format version, the
compile target against the ELF header, the ABI, the checksum over everything the loader maps
(code, metadata, plan, weights), the schema of the metadata and plan (model_schema), and, for a
model to run here, the instruction sets its code was compiled for (target.requires: an AVX-512
model on an AVX2-only CPU, an SDOT model on a Pi 4) against this CPU's. Only a file that passes
all of that is dlopened (open_model, qvit_edge.model.load).

Only headers, the dynamic symbol table, relocations and the model's symbols are read (struct + file
seeks, every offset and size checked against the file size); the weights are hashed in chunks, so
a large model is not read into memory.
"""
from __future__ import annotations

import hashlib
import os
import platform
import stat
import struct
import sys
from dataclasses import dataclass

from qvit_edge import model_schema as schema
from qvit_edge.clikit import UserError

# What every model.so exports (docs/model-so.md); checked before dlopen.
MODEL_SYMBOLS = ("qvit_model_abi", "qvit_model_meta")
# ...and what a model of this format also needs (checked by verify_model_file).
ABI_VERSIONS = (1,)
CHECKSUM_SYMBOL = "qvit_model_sha256"

# e_machine values (ELF spec / <elf.h>) and the names platform.machine() gives for them.
EM_NAMES = {3: "x86 (32-bit)", 8: "mips", 20: "powerpc", 21: "powerpc64", 40: "arm (32-bit)",
            62: "x86_64", 183: "aarch64", 243: "riscv", 258: "loongarch"}
_HOST_EM = {"x86_64": 62, "amd64": 62, "aarch64": 183, "arm64": 183, "armv7l": 40, "armv6l": 40,
            "i686": 3, "i386": 3, "riscv64": 243, "ppc64le": 21, "loongarch64": 258}
ET_NAMES = {1: "a relocatable object file (.o)", 2: "an executable", 3: "a shared library", 4: "a core dump"}
SHT_NOBITS, SHT_DYNSYM = 8, 11
PT_LOAD, PT_DYNAMIC = 1, 2
DT_NULL, DT_PLTRELSZ, DT_STRTAB, DT_SYMTAB, DT_RELA, DT_RELASZ, DT_RELAENT = 0, 2, 5, 6, 7, 8, 9
DT_REL, DT_RELSZ, DT_RELENT, DT_PLTREL, DT_JMPREL = 17, 18, 19, 20, 23
# Relocation types each CPU's loader knows (<elf.h> R_X86_64_*, R_AARCH64_*): a library whose
# e_machine was changed carries the other CPU's types, and ld.so aborts on them.
_RELOC_OK = {"x86_64": lambda t: 0 <= t <= 43,
             "aarch64": lambda t: t in (0, 256) or 257 <= t <= 1032}
STREAM_ABOVE = 1 << 20  # a range larger than this is hashed in chunks
_CHUNK = 1 << 22


class PreflightError(UserError):
    """A model file that must not be loaded, with the reason on one line."""


@dataclass(frozen=True)
class ElfInfo:
    machine: str  # "x86_64", "aarch64", ... (EM_NAMES), or "e_machine N"
    elf_type: str  # ET_NAMES
    size: int  # file size in bytes
    symbols: frozenset | None  # defined dynamic symbols; None when the section table is stripped


@dataclass(frozen=True)
class _Elf:
    info: ElfInfo
    e_type: int
    symbols: dict  # name -> (st_value, st_size) of the defined dynamic symbols
    dynsym: tuple | None  # (sh_addr, count) of the dynamic symbol table section
    loads: tuple  # (p_offset, p_vaddr, p_filesz, p_memsz) of each PT_LOAD
    dynamic: tuple | None  # (p_offset, p_filesz) of PT_DYNAMIC


def host_machine() -> str:
    """What this Python can load, in EM_NAMES terms. A 32-bit Raspberry Pi OS is 'arm (32-bit)'
    even where its kernel is 64-bit and uname says aarch64: the pointer size decides."""
    m = platform.machine().lower()
    em = _HOST_EM.get(m, -1)
    if sys.maxsize <= 2**32:
        em = {183: 40, 62: 3}.get(em, em)
    return EM_NAMES.get(em, m)


# aarch64 HWCAP bits (Linux arch/arm64/include/uapi/asm/hwcap.h) -> the names /proc/cpuinfo uses,
# which target.requires uses: (auxv type, bit). AT_HWCAP = 16, AT_HWCAP2 = 26.
_ARM_HWCAPS = {"fp": (16, 0), "asimd": (16, 1), "aes": (16, 3), "crc32": (16, 7), "atomics": (16, 8),
               "fphp": (16, 9), "asimdhp": (16, 10), "asimdrdm": (16, 12), "asimddp": (16, 20),
               "sve": (16, 22), "i8mm": (26, 13), "bf16": (26, 14)}


def host_isa() -> set | None:
    """This CPU's instruction-set extensions by Linux's names, or None where they cannot be read.
    x86_64: /proc/cpuinfo's flags. aarch64: the HWCAP words of the auxiliary vector (qemu-user
    fills them in for the emulated CPU, while its /proc/cpuinfo shows the host's)."""
    m = host_machine()
    try:
        if m == "x86_64":
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("flags"):
                        return set(line.split(":", 1)[1].split())
            return None
        if m == "aarch64":
            with open("/proc/self/auxv", "rb") as f:
                raw = f.read()
            words = dict(struct.iter_unpack("<QQ", raw[: len(raw) // 16 * 16]))
            return {name for name, (at, bit) in _ARM_HWCAPS.items() if words.get(at, 0) >> bit & 1}
    except OSError:
        return None
    return None


def missing_isa(doc: dict) -> list:
    """The instruction sets the model's code was compiled for (target.requires) that this CPU lacks
    (none where the CPU's cannot be read)."""
    need = (doc.get("target") or {}).get("requires") or []
    have = host_isa() if need else None
    return [n for n in need if have is not None and n not in have]


def check_isa(path: str, doc: dict) -> None:
    """PreflightError when this CPU lacks an instruction set the model's code was compiled for."""
    target = doc.get("target") or {}
    missing = missing_isa(doc)
    if missing:
        raise PreflightError(f"{path}: compiled for {target.get('mcpu')}, whose instructions "
                             f"{', '.join(missing)} this CPU lacks (running it would crash); compile it "
                             "for this machine: make compile (or --mcpu for an older CPU of the family)")


def _hint(head: bytes) -> str:
    """What a non-ELF file probably is, so the error can say what to do instead."""
    if head[:2] == b"PK":
        return " (it looks like a zip archive, e.g. a PyTorch checkpoint: compile it with `make compile`)"
    if len(head) >= 9 and head[8:9] == b"{":
        return " (it looks like a safetensors file, e.g. an integer model: compile it with `make compile`)"
    if head[:4] in (b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbe"):
        return " (it is a macOS Mach-O file)"
    if head[:2] == b"MZ":
        return " (it is a Windows PE file)"
    return ""


# ---------------------------------------------------------------------------------------------- the file


def _os_error(path: str, e: OSError) -> PreflightError:
    if isinstance(e, FileNotFoundError):
        return PreflightError(f"{path}: no such file")
    if isinstance(e, PermissionError):
        return PreflightError(f"{path}: permission denied")
    return PreflightError(f"{path}: cannot read ({e.strerror or e})")


def _not_regular(path: str, mode: int) -> PreflightError | None:
    """Opening a FIFO blocks until a writer comes, a device may never end: only plain files."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return PreflightError(f"{path}: is a directory, not a model.so")
    what = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
    return PreflightError(f"{path}: {what}, not a model.so")


def check_regular_file(path: str) -> int:
    """Refuses anything but a regular file (stat only: nothing is opened). Returns its size."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise _os_error(path, e) from None
    except ValueError:  # an embedded NUL
        raise PreflightError(f"{path!r}: not a valid file name") from None
    err = _not_regular(path, st.st_mode)
    if err:
        raise err
    return st.st_size


def _open_elf(path: str, reader, *args):
    """reader(f, path, size, *args) on the opened file; every OSError becomes one line."""
    check_regular_file(path)
    try:
        # O_NONBLOCK: should the path become a FIFO after the check, open still returns.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise _os_error(path, e) from None
    try:
        st = os.fstat(fd)
        err = _not_regular(path, st.st_mode)
        if err:
            raise err
        with os.fdopen(fd, "rb") as f:
            fd = -1
            return reader(f, path, st.st_size, *args)
    except OSError as e:
        raise _os_error(path, e) from None
    finally:
        if fd >= 0:
            os.close(fd)


def _corrupt(path: str, what: str) -> PreflightError:
    return PreflightError(f"{path}: truncated or corrupt ELF file ({what})")


def _read(f, path: str, size: int, off: int, n: int, what: str) -> bytes:
    if off < 0 or n < 0 or off + n > size:
        raise _corrupt(path, f"{what} past the end")
    f.seek(off)
    b = f.read(n)
    if len(b) != n:  # the file shrank while being read
        raise _corrupt(path, f"{what} past the end")
    return b


# ---------------------------------------------------------------------------------------------- ELF


def read_elf(path: str) -> ElfInfo:
    """Reads the ELF header and dynamic symbols of a 64-bit little-endian file."""
    return _open_elf(path, _read_elf).info


def _read_elf(f, path: str, size: int) -> _Elf:
    if size == 0:
        raise PreflightError(f"{path}: empty file, not a model.so")
    head = f.read(64)
    if head[:4] != b"\x7fELF":
        raise PreflightError(f"{path}: not a shared library (no ELF header){_hint(head)}")
    if len(head) < 64:
        raise PreflightError(f"{path}: truncated ELF header ({size} bytes)")
    if head[4] != 2:
        raise PreflightError(f"{path}: a 32-bit ELF file; qvit-edge runs 64-bit models only")
    if head[5] != 1:
        raise PreflightError(f"{path}: a big-endian ELF file; qvit-edge models are little-endian")
    e_type, e_machine = struct.unpack_from("<HH", head, 16)
    machine = EM_NAMES.get(e_machine, f"e_machine {e_machine}")
    elf_type = ET_NAMES.get(e_type, f"ELF type {e_type}")
    phoff, shoff = struct.unpack_from("<QQ", head, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", head, 0x36)

    loads, dynamic = [], None
    if phnum:
        if phentsize != 56:
            raise _corrupt(path, f"program header size {phentsize}")
        table = _read(f, path, size, phoff, phnum * 56, "program headers")
        for i in range(phnum):
            p_type, _, p_off, p_vaddr, _, p_filesz, p_memsz, _ = struct.unpack_from("<IIQQQQQQ", table,
                                                                                      i * 56)
            if p_type not in (PT_LOAD, PT_DYNAMIC):
                continue
            if p_off + p_filesz > size:
                raise _corrupt(path, "segment past the end")
            if p_type == PT_DYNAMIC:
                dynamic = (p_off, p_filesz)
            elif p_filesz > p_memsz or p_vaddr + p_memsz >= 1 << 48:
                raise _corrupt(path, "segment sizes")
            else:
                loads.append((p_off, p_vaddr, p_filesz, p_memsz))

    symbols: dict | None = None
    dynsym = None
    if shoff and shnum:
        if shentsize < 64:
            raise _corrupt(path, f"section header size {shentsize}")
        table = _read(f, path, size, shoff, shnum * shentsize, "section table")
        sections = [struct.unpack_from("<IIQQQQIIQQ", table, i * shentsize) for i in range(shnum)]
        symbols = {}
        for _, sh_type, _, addr, off, sz, link, _, _, entsize in sections:
            if sh_type != SHT_DYNSYM:
                continue
            if link >= shnum or entsize < 24:
                raise _corrupt(path, "symbol table")
            syms = _read(f, path, size, off, sz, "symbol table")
            strtab = _read(f, path, size, sections[link][4], sections[link][5], "symbol names")
            dynsym = (addr, sz // entsize)
            for i in range(sz // entsize):
                st_name, _, _, st_shndx, st_value, st_size = struct.unpack_from("<IBBHQQ", syms, i * entsize)
                if st_shndx == 0 or st_name >= len(strtab):  # undefined: imported, not exported
                    continue
                end = strtab.find(b"\0", st_name)
                name = strtab[st_name:end if end >= 0 else None].decode("utf-8", "replace")
                symbols[name] = (st_value, st_size)
    info = ElfInfo(machine=machine, elf_type=elf_type, size=size,
                   symbols=None if symbols is None else frozenset(symbols))
    return _Elf(info=info, e_type=e_type, symbols=symbols or {}, dynsym=dynsym, loads=tuple(loads),
                dynamic=dynamic)


def _file_offset(elf: _Elf, vaddr: int, n: int) -> int | None:
    """Where the n bytes the loader maps at vaddr are in the file (None: not all in the file)."""
    for off, start, filesz, _ in elf.loads:
        if start <= vaddr and vaddr + n <= start + filesz:
            return off + (vaddr - start)
    return None


def _check_loadable(f, path: str, size: int, elf: _Elf) -> None:
    """What ld.so reads before any code runs: segments, the dynamic section, the relocations. A
    relocation of another CPU aborts the loader; one outside the image writes anywhere."""
    if not elf.loads:
        raise _corrupt(path, "no loadable segment")
    if elf.dynamic is None:
        raise _corrupt(path, "no dynamic section")
    off, sz = elf.dynamic
    raw = _read(f, path, size, off, sz - sz % 16, "dynamic section")
    tags: dict[int, int] = {}
    for i in range(0, len(raw), 16):
        tag, val = struct.unpack_from("<qQ", raw, i)
        if tag == DT_NULL:
            break
        tags.setdefault(tag, val)
    else:
        raise _corrupt(path, "dynamic section not terminated")
    for tag, what in ((DT_SYMTAB, "symbol table"), (DT_STRTAB, "symbol names")):
        if tag not in tags or _file_offset(elf, tags[tag], 1) is None:
            raise _corrupt(path, f"dynamic {what} outside the file")
    nsyms = None
    if elf.dynsym is not None:
        if elf.dynsym[0] != tags[DT_SYMTAB]:
            raise _corrupt(path, "symbol table section and dynamic section disagree")
        nsyms = elf.dynsym[1]
    tables = []
    if DT_RELA in tags:
        tables.append((tags[DT_RELA], tags.get(DT_RELASZ, 0), tags.get(DT_RELAENT, 24), 24))
    if DT_REL in tags:
        tables.append((tags[DT_REL], tags.get(DT_RELSZ, 0), tags.get(DT_RELENT, 16), 16))
    if DT_JMPREL in tags:
        ent = 24 if tags.get(DT_PLTREL, DT_RELA) == DT_RELA else 16
        tables.append((tags[DT_JMPREL], tags.get(DT_PLTRELSZ, 0), ent, ent))
    type_ok = _RELOC_OK.get(elf.info.machine)
    images = [(start, start + memsz) for _, start, _, memsz in elf.loads]
    for addr, nbytes, ent, want in tables:
        if ent != want or nbytes % ent:
            raise _corrupt(path, "relocation entry size")
        at = _file_offset(elf, addr, nbytes)
        if at is None:
            raise _corrupt(path, "relocations outside the file")
        rel = _read(f, path, size, at, nbytes, "relocations")
        for i in range(0, nbytes, ent):
            r_offset, r_info = struct.unpack_from("<QQ", rel, i)
            r_type, r_sym = r_info & 0xFFFFFFFF, r_info >> 32
            if type_ok is not None and not type_ok(r_type):
                raise PreflightError(f"{path}: relocation type {r_type} is not one of {elf.info.machine}'s "
                                     f"(file damaged, or its ELF header names the wrong CPU)")
            if not any(lo <= r_offset and r_offset + 8 <= hi for lo, hi in images):
                raise _corrupt(path, "relocation outside the image")
            if nsyms is not None and r_sym >= nsyms:
                raise _corrupt(path, "relocation of an unknown symbol")


def _check_elf(f, path: str, size: int, machine: str | None, loadable: bool = True) -> _Elf:
    """machine: the CPU it must be built for; None: this one; "any": every CPU (info).
    loadable: also check what the loader reads (_check_loadable)."""
    elf = _read_elf(f, path, size)
    info = elf.info
    if info.elf_type != ET_NAMES[3]:
        raise PreflightError(f"{path}: {info.elf_type}, not a shared library (model.so)")
    want = host_machine() if machine is None else machine
    if want != "any" and info.machine != want:
        hint = ""
        if want == EM_NAMES[40] and info.machine == "aarch64":
            hint = "; this board runs a 32-bit OS: install a 64-bit OS (Raspberry Pi OS 64-bit)"
        elif info.machine in ("aarch64", "x86_64"):
            hint = f"; compile one for this machine: make compile TARGET={want}"
        raise PreflightError(f"{path}: built for {info.machine}, this machine is {want}{hint}")
    # (No section table at all, as `sstrip` leaves it: the loader's own check has to do.)
    missing = [s for s in MODEL_SYMBOLS if info.symbols is not None and s not in info.symbols]
    if missing:
        raise PreflightError(f"{path}: a shared library but not a qvit-edge model (no {', '.join(missing)})")
    if loadable:
        _check_loadable(f, path, size, elf)
    return elf


def check_model_file(path: str, machine: str | None = None) -> ElfInfo:
    """Everything about the file that can be known without loading it; raises PreflightError.

    machine: the CPU it must be built for (default: this one; "any": every CPU)."""
    return _open_elf(path, _check_elf, machine).info


# ---------------------------------------------------------------------------------------------- symbols


def _symbol(elf: _Elf, path: str, name: str, nbytes: int | None = None) -> tuple[int, int]:
    """(file offset, size) of a defined data symbol: where the loader maps it from."""
    if elf.info.symbols is None:
        raise PreflightError(f"{path}: no ELF section table (stripped with sstrip?): its model symbols "
                             f"cannot be checked")
    if name not in elf.symbols:
        raise PreflightError(f"{path}: a shared library but not a qvit-edge model (no {name})")
    value, size = elf.symbols[name]
    n = size if nbytes is None else nbytes
    at = _file_offset(elf, value, n)
    if at is None:
        raise _corrupt(path, f"symbol {name} not in the file")
    return at, n


def _symbol_reader(f, path: str, size: int, names) -> dict:
    """{name: bytes} of defined data symbols (small ones: each is read whole)."""
    elf = _read_elf(f, path, size)
    out = {}
    for name in names:
        at, n = _symbol(elf, path, name)
        out[name] = _read(f, path, size, at, n, f"symbol {name}")
    return out


def _scalar(f, path, size, elf, name, fmt: str) -> int:
    at, n = _symbol(elf, path, name)
    if n != struct.calcsize(fmt):
        raise PreflightError(f"{path}: corrupt model ({name} is {n} bytes, not {struct.calcsize(fmt)})")
    return struct.unpack(fmt, _read(f, path, size, at, n, f"symbol {name}"))[0]


def _chunks(f, path: str, size: int, at: int, n: int):
    if at < 0 or at + n > size:
        raise _corrupt(path, "range past the end")
    f.seek(at)
    step = n if n <= STREAM_ABOVE else _CHUNK
    left = n
    while left:
        chunk = f.read(min(left, step))
        if not chunk:
            raise _corrupt(path, "range past the end")
        left -= len(chunk)
        yield chunk


def image_digest(f, path: str, size: int, elf: _Elf, blank: tuple[int, int] | None) -> str:
    """SHA-256 of every loadable segment's bytes in the file, in program-header order, with the
    bytes at blank = (file offset, length) (the checksum itself) read as ASCII '0'."""
    h = hashlib.sha256()
    for off, _, filesz, _ in elf.loads:
        pos = off
        for chunk in _chunks(f, path, size, off, filesz):
            if blank is not None and pos < blank[0] + blank[1] and blank[0] < pos + len(chunk):
                b = bytearray(chunk)
                lo, hi = max(blank[0], pos), min(blank[0] + blank[1], pos + len(chunk))
                b[lo - pos:hi - pos] = b"0" * (hi - lo)
                chunk = bytes(b)
            h.update(chunk)
            pos += len(chunk)
    return h.hexdigest()


def checksum_range(path: str) -> tuple[int, int]:
    """(file offset, 64) of the checksum's hex digits (the compiler fills them in after linking)."""
    def reader(f, path, size):
        at, n = _symbol(_read_elf(f, path, size), path, CHECKSUM_SYMBOL)
        if n != 65:
            raise PreflightError(f"{path}: corrupt model ({CHECKSUM_SYMBOL} is {n} bytes, not 65)")
        return at, 64
    return _open_elf(path, reader)


def compute_checksum(path: str) -> str:
    """model_sha256 of a model.so file as the compiler defines it (docs/model-so.md)."""
    def reader(f, path, size):
        elf = _read_elf(f, path, size)
        at, n = _symbol(elf, path, CHECKSUM_SYMBOL)
        return image_digest(f, path, size, elf, (at, 64))
    return _open_elf(path, reader)


# ---------------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class ModelFile:
    """A model.so that passed every check before loading (verify_model_file)."""

    path: str
    elf: ElfInfo
    doc: dict  # the metadata, "plan" included (validated by model_schema)
    abi: int
    num_kernels: int
    blob_size: int
    sha256: str  # model_sha256, verified
    symbols: dict  # name -> st_value of the model's symbols (to check what the loader resolved)


_VALUE_SYMBOLS = ("qvit_model_abi", "qvit_model_meta", "qvit_model_blob", "qvit_model_blob_size",
                  "qvit_model_kernels", "qvit_model_num_kernels", "qvit_model_bind", CHECKSUM_SYMBOL)


def _model_reader(f, path: str, size: int, machine: str | None) -> ModelFile:
    elf = _check_elf(f, path, size, machine, loadable=False)  # loadable: once the metadata is read

    def corrupt(what):
        return PreflightError(f"{path}: corrupt model ({what})")

    at, n = _symbol(elf, path, "qvit_model_meta")
    if n > schema.MAX_META_BYTES:
        raise corrupt(f"qvit_model_meta of {n} bytes")
    meta = _read(f, path, size, at, n, "symbol qvit_model_meta")
    try:
        doc = schema.parse(meta)
        schema.check_version(doc)  # first: another version may mean another layout
    except schema.VersionError as e:
        raise PreflightError(f"{path}: {e}") from None
    except schema.SchemaError as e:
        raise corrupt(e) from None
    target = doc.get("target")
    arch = target.get("arch") if isinstance(target, dict) else None
    if arch in schema.TARGET_ARCHS and arch != elf.info.machine:
        raise PreflightError(f"{path}: compiled for {arch} (metadata) but its ELF header says "
                             f"{elf.info.machine} (file damaged?)")
    _check_loadable(f, path, size, elf)
    abi = _scalar(f, path, size, elf, "qvit_model_abi", "<i")
    if abi not in ABI_VERSIONS:
        raise PreflightError(f"{path}: model ABI {abi} is not supported by this runtime "
                             f"(knows {list(ABI_VERSIONS)})")
    for name in _VALUE_SYMBOLS:
        _symbol(elf, path, name, 0 if name == "qvit_model_bind" else None)
    sha_at, sha_n = _symbol(elf, path, CHECKSUM_SYMBOL)
    if sha_n != 65:
        raise corrupt(f"{CHECKSUM_SYMBOL} is {sha_n} bytes, not 65")
    stored = _read(f, path, size, sha_at, 64, f"symbol {CHECKSUM_SYMBOL}").decode("ascii", "replace")
    if image_digest(f, path, size, elf, (sha_at, 64)) != stored:
        raise PreflightError(f"{path}: checksum mismatch: metadata, plan, weights or code damaged "
                             f"(model_sha256, docs/model-so.md)")
    # The checksum holds; still, nothing below is trusted without a bounds check.
    blob_size = _scalar(f, path, size, elf, "qvit_model_blob_size", "<Q")
    if blob_size > elf.symbols["qvit_model_blob"][1]:
        raise corrupt(f"qvit_model_blob_size {blob_size} is larger than qvit_model_blob")
    num_kernels = _scalar(f, path, size, elf, "qvit_model_num_kernels", "<i")
    if not 1 <= num_kernels <= schema.MAX_KERNELS:
        raise corrupt(f"qvit_model_num_kernels {num_kernels}")
    if elf.symbols["qvit_model_kernels"][1] != 8 * num_kernels:
        raise corrupt(f"qvit_model_kernels holds {elf.symbols['qvit_model_kernels'][1] // 8} entries, "
                      f"qvit_model_num_kernels says {num_kernels}")
    try:
        schema.validate(doc, blob_size, num_kernels)
    except schema.SchemaError as e:
        raise corrupt(e) from None
    if machine is None:  # to run here
        check_isa(path, doc)
    return ModelFile(path=path, elf=elf.info, doc=doc, abi=abi, num_kernels=num_kernels, blob_size=blob_size,
                     sha256=stored, symbols={k: elf.symbols[k][0] for k in _VALUE_SYMBOLS})


def verify_model_file(path: str, machine: str | None = None) -> ModelFile:
    """Every check short of loading: regular file -> ELF (built for `machine`, default this CPU;
    "any" for info) -> format version -> compile target vs ELF header -> ABI -> checksum -> schema.
    Raises PreflightError (one line)."""
    return _open_elf(path, _model_reader, machine)


def read_model_doc(path: str) -> dict:
    """A model.so's metadata (without the plan), read from the file without loading it, for any CPU;
    verified: format version, checksum, schema (docs/model-so.md)."""
    doc = dict(verify_model_file(path, machine="any").doc)
    doc.pop("plan", None)
    return doc


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_threads(threads) -> int:
    """--threads: an integer from 1 to the CPUs available (more only oversubscribes the cores)."""
    try:
        n = int(threads)
    except (TypeError, ValueError):
        raise UserError(f"--threads {threads!r}: not an integer") from None
    cpus = available_cpus()
    if not 1 <= n <= cpus:
        raise UserError(f"--threads {n}: must be between 1 and {cpus} (the CPUs available here)")
    return n


def open_model(path: str, threads: int = 1, profile: bool = False):
    """The one way the command lines open a model: verify_model_file (regular file, ELF, metadata,
    checksum, schema, CPU), and only then qvit_edge.model's dlopen."""
    verified = verify_model_file(path)
    from qvit_edge import model  # needs the native library: imported only once the file is right

    return model.Model(path, threads=threads, profile=profile, verified=verified)
