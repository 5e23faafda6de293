"""Checks a model.so before anything loads it: file, ELF header, CPU architecture, qvit symbols.

Loading a shared library runs its code (constructors) and, when it is for another CPU or not
a library at all, fails with a loader message nobody can act on. So the file is read as
plain bytes first and each way it can be wrong gets its own one-line error:

    missing / a directory / empty / unreadable
    not an ELF file (with a hint when it is an integer model or a checkpoint instead)
    32-bit or big-endian ELF, an executable or object file rather than a shared library
    built for another CPU ("built for aarch64, this machine is x86_64")
    a shared library that does not export the qvit model symbols (docs/model-so.md)

Only the ELF header, the section headers and the dynamic symbol table are read (struct +
file seeks), so a large model is not read into memory twice.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import struct
import sys
from dataclasses import dataclass

from qvit_edge.clikit import UserError

# What every model.so exports (docs/model-so.md); checked before dlopen.
MODEL_SYMBOLS = ("qvit_model_abi", "qvit_model_meta")

# e_machine values (ELF spec / <elf.h>) and the names platform.machine() gives for them.
EM_NAMES = {3: "x86 (32-bit)", 8: "mips", 20: "powerpc", 21: "powerpc64", 40: "arm (32-bit)",
            62: "x86_64", 183: "aarch64", 243: "riscv", 258: "loongarch"}
_HOST_EM = {"x86_64": 62, "amd64": 62, "aarch64": 183, "arm64": 183, "armv7l": 40, "armv6l": 40,
            "i686": 3, "i386": 3, "riscv64": 243, "ppc64le": 21, "loongarch64": 258}
ET_NAMES = {1: "a relocatable object file (.o)", 2: "an executable", 3: "a shared library", 4: "a core dump"}
SHT_DYNSYM = 11


class PreflightError(UserError):
    """A model file that must not be loaded, with the reason on one line."""


@dataclass(frozen=True)
class ElfInfo:
    machine: str  # "x86_64", "aarch64", ... (EM_NAMES), or "e_machine N"
    elf_type: str  # ET_NAMES
    size: int  # file size in bytes
    symbols: frozenset | None  # defined dynamic symbols; None when the section table is stripped


def host_machine() -> str:
    """What this Python can load, in EM_NAMES terms. A 32-bit Raspberry Pi OS is 'arm (32-bit)'
    even where its kernel is 64-bit and uname says aarch64: the pointer size decides."""
    m = platform.machine().lower()
    em = _HOST_EM.get(m, -1)
    if sys.maxsize <= 2**32:
        em = {183: 40, 62: 3}.get(em, em)
    return EM_NAMES.get(em, m)


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


def read_elf(path: str) -> ElfInfo:
    """Reads the ELF header and dynamic symbols of a 64-bit little-endian file."""
    return _open_elf(path, _read_elf)[0]


def _open_elf(path: str, reader, *args):
    try:
        if os.path.isdir(path):
            raise PreflightError(f"{path}: is a directory, not a model.so")
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            return reader(f, path, size, *args)
    except FileNotFoundError:
        raise PreflightError(f"{path}: no such file") from None
    except PermissionError:
        raise PreflightError(f"{path}: permission denied") from None
    except OSError as e:
        raise PreflightError(f"{path}: cannot read ({e.strerror or e})") from None


def _read_elf(f, path: str, size: int):
    """-> (ElfInfo, sections, {symbol: (value, size)})."""
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
    shoff, = struct.unpack_from("<Q", head, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", head, 0x3A)
    symbols: dict[str, tuple[int, int]] | None = None
    sections = []
    if shoff and shnum and shentsize >= 64:
        symbols = {}
        if shoff + shnum * shentsize > size:
            raise PreflightError(f"{path}: truncated or corrupt ELF file (section table past the end)")
        f.seek(shoff)
        table = f.read(shnum * shentsize)
        sections = [struct.unpack_from("<IIQQQQIIQQ", table, i * shentsize) for i in range(shnum)]
        for _, sh_type, _, _, off, sz, link, _, _, entsize in sections:
            if sh_type != SHT_DYNSYM or link >= shnum:
                continue
            str_off, str_sz = sections[link][4], sections[link][5]
            if off + sz > size or str_off + str_sz > size or entsize < 24:
                raise PreflightError(f"{path}: truncated or corrupt ELF file (symbol table past the end)")
            f.seek(off)
            syms = f.read(sz)
            f.seek(str_off)
            strtab = f.read(str_sz)
            for i in range(sz // entsize):
                st_name, _, _, st_shndx, st_value, st_size = struct.unpack_from("<IBBHQQ", syms, i * entsize)
                if st_shndx == 0 or st_name >= len(strtab):  # undefined: imported, not exported
                    continue
                end = strtab.find(b"\0", st_name)
                name = strtab[st_name:end if end >= 0 else None].decode("utf-8", "replace")
                symbols[name] = (st_value, st_size)
    info = ElfInfo(machine=machine, elf_type=elf_type, size=size,
                   symbols=None if symbols is None else frozenset(symbols))
    return info, sections, symbols or {}


SHT_NOBITS = 8
STREAM_ABOVE = 1 << 20  # a sized array (the weights) larger than this is hashed in chunks


def _symbol_reader(f, path: str, size: int, names, lengths=None):
    """The bytes of defined data symbols, found through the section that holds their address.

    lengths: {name: symbol holding the length as a uint64} for arrays sized by another symbol."""
    _, sections, symbols = _read_elf(f, path, size)
    out = {}
    for name in names:
        if name not in symbols:
            raise PreflightError(f"{path}: a shared library but not a qvit-edge model (no {name})")
        value, nbytes = symbols[name]
        if lengths and name in lengths:
            n_raw = out[lengths[name]]
            nbytes = struct.unpack("<Q", n_raw)[0] if len(n_raw) == 8 else -1
            if not 0 <= nbytes <= symbols[name][1]:
                raise PreflightError(f"{path}: corrupt model ({lengths[name]} does not fit {name})")
        for _, sh_type, _, addr, off, sz, *_ in sections:
            if sh_type != SHT_NOBITS and addr <= value and value + nbytes <= addr + sz:
                if off + (value - addr) + nbytes > size:
                    break
                f.seek(off + (value - addr))
                big = lengths and name in lengths and nbytes > STREAM_ABOVE
                out[name] = _Range(f.name, f.tell(), nbytes) if big else f.read(nbytes)
                break
        else:
            raise PreflightError(f"{path}: truncated or corrupt ELF file (symbol {name} not in the file)")
    return out


@dataclass(frozen=True)
class _Range:
    """A large symbol (the weights blob): read in chunks, never whole."""

    file: str
    offset: int
    size: int

    def sha256(self) -> str:
        h = hashlib.sha256()
        with open(self.file, "rb") as f:
            f.seek(self.offset)
            left = self.size
            while left:
                chunk = f.read(min(left, 1 << 22))
                if not chunk:
                    break
                h.update(chunk)
                left -= len(chunk)
        return h.hexdigest()


def read_model_doc(path: str) -> dict:
    """A model.so's metadata document, read from the file without loading it (any architecture).

    Checks what the loader checks that needs no code to run: the format and its version,
    and the SHA-256 of the weights blob against weights_sha256 (docs/model-so.md)."""
    from qvit_edge.model import FORMAT, FORMAT_VERSIONS  # the executor's constants, one source

    got = _open_elf(path, _symbol_reader, ("qvit_model_meta", "qvit_model_blob_size", "qvit_model_blob"),
                    {"qvit_model_blob": "qvit_model_blob_size"})
    meta = got["qvit_model_meta"]
    meta = meta if isinstance(meta, bytes) else b""
    try:
        doc = json.loads(meta.split(b"\0", 1)[0].decode())
    except ValueError:
        raise PreflightError(f"{path}: corrupt metadata (not JSON)") from None
    if not isinstance(doc, dict):
        raise PreflightError(f"{path}: corrupt metadata (not a JSON object)")
    if doc.get("format") != FORMAT or doc.get("format_version") not in FORMAT_VERSIONS:
        raise PreflightError(f"{path}: format {doc.get('format')!r} version {doc.get('format_version')!r} "
                             f"is not supported (this runtime reads {FORMAT} {list(FORMAT_VERSIONS)})")
    blob = got["qvit_model_blob"]
    digest = blob.sha256() if isinstance(blob, _Range) else hashlib.sha256(blob).hexdigest()
    if digest != doc.get("weights_sha256"):
        raise PreflightError(f"{path}: weights checksum mismatch (file damaged?)")
    doc.pop("plan", None)
    return doc


def check_model_file(path: str, machine: str | None = None) -> ElfInfo:
    """Everything that can be known about a model.so without loading it; raises PreflightError.

    machine: the CPU it must be built for (default: this one)."""
    info = read_elf(path)
    if info.elf_type != ET_NAMES[3]:
        raise PreflightError(f"{path}: {info.elf_type}, not a shared library (model.so)")
    want = machine or host_machine()
    if info.machine != want:
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
    return info


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
    """check_model_file, then qvit_edge.model.load: the one way the command lines open a model."""
    check_model_file(path)
    from qvit_edge import model  # needs the native library: imported only once the file looks right

    return model.load(path, threads=threads, profile=profile)
