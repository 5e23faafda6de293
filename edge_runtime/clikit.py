"""A tiny verb registry shared by the `qvit` and `qvit-edge` command lines.

Each verb lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`.
A verb whose module does not exist yet answers with one "not built yet" line, so the
command line shows the whole pipeline from day one. Modules load lazily: `qvit-edge --help`
never imports torch or TVM.
"""
from __future__ import annotations

import argparse
import importlib
import re
import sys
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
    parser = build_parser(prog, description, verbs, version, argv)
    args = parser.parse_args(argv)
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
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


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
