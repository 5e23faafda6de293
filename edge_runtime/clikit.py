"""A tiny verb registry shared by the `qvit` and `qvit-edge` command lines.

Each verb lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`.
A verb whose module does not exist yet answers with one "not built yet" line, so the
command line shows the whole pipeline from day one. Modules load lazily: `qvit-edge --help`
never imports torch or TVM.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import math
import os
import re
import stat
import sys
import tempfile
from dataclasses import dataclass


class UserError(Exception):
    """An error a user can cause (bad file, bad flag): printed as one line, exit code 2."""


@dataclass(frozen=True)
class Verb:
    name: str
    module: str  # dotted path of the module implementing it
    help: str
    issue: str  # where the work that builds it is tracked


def _load(verb: Verb):
    try:
        return importlib.import_module(verb.module)
    except ModuleNotFoundError as e:
        if e.name == verb.module:
            return None
        raise


def build_parser(prog: str, description: str, verbs: list[Verb], version: str,
                 argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv` (default: sys.argv[1:]). Only the verb argv names gets its module
    imported and its arguments registered, so `--help` never imports torch or TVM."""
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = argv[0] if argv else None
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"{prog} {version}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb in verbs:
        p = sub.add_parser(verb.name, help=verb.help, description=verb.help)
        p.set_defaults(_verb=verb)
        if chosen == verb.name:
            mod = _load(verb)
            if mod is not None:
                mod.add_arguments(p)
            else:
                p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def main(prog: str, description: str, verbs: list[Verb], version: str, argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    safe_stdio()
    parser = build_parser(prog, description, verbs, version, argv)
    args = parse_args(parser, argv)
    if args is None:
        return 2
    verb: Verb | None = getattr(args, "_verb", None)
    if verb is None:
        parser.print_help()
        return 2
    mod = _load(verb)
    if mod is None:
        print(f"{prog} {verb.name}: not built yet ({verb.issue})", file=sys.stderr)
        return 2
    try:
        return int(mod.run(args) or 0)
    except UserError as e:
        print(f"{prog} {verb.name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog} {verb.name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`... | head`): not an error of ours; silence the flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


# ---------------------------------------------------------------------------------------------
# shared by every command line (`qvit`, `qvit-edge`, `python -m qvit_compile`)
# ---------------------------------------------------------------------------------------------

_NEVER_FAILING = ("replace", "backslashreplace", "xmlcharrefreplace", "namereplace")


def safe_stdio() -> None:
    """Printing never fails on encoding: a name the output encoding cannot hold (an image called
    `\u00e9.png` under PYTHONIOENCODING=ascii, undecodable bytes in argv) is printed escaped
    (backslashreplace keeps two different names different) instead of raising UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) in _NEVER_FAILING:
            continue
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
            pass  # not a TextIOWrapper (replaced by the caller): leave it as it is


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None,
               prefix: str | None = None) -> argparse.Namespace | None:
    """parser.parse_args(argv), but a bad argument is ONE line on stderr (argparse's usage line is
    dropped; `--help` says it) and None is returned: the caller exits with status 2. `--help` and
    `--version` exit as argparse does. prefix: what the line starts with (default: the prog argparse
    names, e.g. "qvit-edge run")."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):
            return parser.parse_args(argv)
    except SystemExit as e:
        text = buf.getvalue()
        if e.code in (0, None):
            sys.stderr.write(text)
            raise
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        at = next((i for i, ln in enumerate(lines) if ": error: " in ln), None)
        if at is None:
            line = " ".join(lines) or "invalid arguments"
        else:
            head, _, msg = " ".join(lines[at:]).partition(": error: ")
            line = f"{prefix or head}: error: {msg}"
        print(line, file=sys.stderr)
        return None


# argparse `type=` helpers: every argument is range-checked while parsing, before any work starts
# (a bad --out must not cost a 25 s compile first). Their messages follow "argument --x: ".


def _int(s: str) -> int:
    try:
        return int(s)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{s!r} is not a whole number") from None


def positive_int(s: str) -> int:
    """A whole number >= 1 (threads, counts, limits, batch sizes)."""
    v = _int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {s}")
    return v


def nonneg_int(s: str) -> int:
    """A whole number >= 0 (warm-up runs, 0 = off switches)."""
    v = _int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {s}")
    return v


def int_range(lo: int, hi: int):
    """A whole number in lo..hi (bit widths, seeds)."""

    def int_in_range(s: str) -> int:
        v = _int(s)
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be {lo}..{hi}, got {s}")
        return v

    return int_in_range


def _float(s: str) -> float:
    try:
        v = float(s)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {s}")
    return v


def positive_float(s: str) -> float:
    """A finite number > 0 (learning rate, temperature)."""
    v = _float(s)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
    return v


def nonneg_float(s: str) -> float:
    """A finite number >= 0 (coefficients, weight decay, 0 = off)."""
    v = _float(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def fraction(s: str) -> float:
    """A finite number in [0, 1] (probabilities, mixing weights)."""
    v = _float(s)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {s}")
    return v


def _probe_dir(d: str) -> None:
    """Create and remove a file in d: the only check that also catches what access(2) cannot
    (root writing into /proc, a full or read-only file system)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".qvit-write-test-", dir=d)
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot write into {d or '.'} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(name)


def _nearest_existing(d: str) -> str:
    """d, or the closest existing folder above it (a command creates the missing ones)."""
    d = os.path.abspath(d)
    while not os.path.lexists(d):
        d = os.path.dirname(d)
    if not os.path.isdir(d):
        raise argparse.ArgumentTypeError(f"{d} is not a directory")
    return d


def _check_creatable(d: str) -> None:
    """Folder d exists and takes files, or can be made: a folder can be made in its nearest
    existing ancestor (tried, as access(2) says yes to root everywhere, /proc included)."""
    top = _nearest_existing(d)
    if top == os.path.abspath(d):
        _probe_dir(top)
        return
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".qvit-write-test-", dir=top))
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot create folders in {top} ({e.strerror or e})") from None


def _check_out_file(s: str) -> str:
    """Not empty, not a directory, not a device or pipe; -> its folder (absolute)."""
    if not s or not s.strip():
        raise argparse.ArgumentTypeError("empty file name")
    if s.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(f"{s} names a directory; give a file name")
    try:
        st = os.stat(s)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot use {s} ({e.strerror or e})") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise argparse.ArgumentTypeError(f"{s} is a directory; give a file name")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise argparse.ArgumentTypeError(f"{s} exists and is not a regular file")
    return os.path.dirname(os.path.abspath(s))


def writable_file_path(s: str) -> str:
    """--out FILE in an existing, writable folder (replacing a regular file is fine)."""
    d = _check_out_file(s)
    if not os.path.isdir(d):
        raise argparse.ArgumentTypeError(f"cannot write {s}: no such directory {os.path.dirname(s) or d}")
    _probe_dir(d)
    return s


def creatable_file_path(s: str) -> str:
    """--out FILE for a command that creates its missing folders: the nearest existing one writable."""
    _check_creatable(_check_out_file(s))
    return s


def writable_dir_path(s: str) -> str:
    """--out DIR: a folder to write into, existing or creatable."""
    if not s or not s.strip():
        raise argparse.ArgumentTypeError("empty directory name")
    if os.path.lexists(s) and not os.path.isdir(s):
        raise argparse.ArgumentTypeError(f"{s} exists and is not a directory")
    _check_creatable(s)
    return s


_CC_ERROR = re.compile(r"(fatal error|error):|undefined reference|cannot find -l|multiple definition")


def compiler_error(output: str) -> str:
    """The first real error line of a C compiler's or linker's output (`x.c:3:10: fatal error: ...`),
    not its last ("compilation terminated.", "collect2: error: ld returned 1 exit status")."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for ln in lines:
        if _CC_ERROR.search(ln) and not ln.startswith("collect2:"):
            return ln
    return lines[-1] if lines else "no output from the compiler"


if __name__ == "__main__":
    # `python3 edge_runtime/clikit.py compiler-error < build.log`: the same line for shell scripts.
    if sys.argv[1:] != ["compiler-error"]:
        sys.exit("usage: clikit.py compiler-error < compiler-output")
    print(compiler_error(sys.stdin.read()))
