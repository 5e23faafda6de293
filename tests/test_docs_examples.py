"""Every ```python block of docs/runtime.md and README.md runs as written (cwd = the repository
root, so examples/images/... resolve), with its model.so path replaced by the tiny model.so the
suite compiles once (conftest.py's api_model)."""
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ("docs/runtime.md", "README.md")
SO_PATH = re.compile(r"""(["'])[^"'\n]*\.so\1""")


def python_blocks(rel: str) -> list[tuple[int, str]]:
    """(line number, code) of each ```python block of a markdown file."""
    lines = open(os.path.join(ROOT, rel), encoding="utf-8").read().splitlines()
    blocks, start = [], None
    for i, line in enumerate(lines, 1):
        s = line.strip()
        if start is None and s == "```python":
            start = i
        elif start is not None and s == "```":
            blocks.append((start, "\n".join(lines[start:i - 1])))
            start = None
    return blocks


BLOCKS = [(rel, n, code) for rel in DOCS for n, code in python_blocks(rel)]


def test_runtime_doc_has_python_examples():
    assert any(rel == "docs/runtime.md" for rel, _, _ in BLOCKS)


@pytest.mark.parametrize("rel,line,code", BLOCKS, ids=[f"{rel}:{n}" for rel, n, _ in BLOCKS])
def test_python_example_runs(api_model, rel, line, code, monkeypatch, capsys):
    path, _ = api_model
    code = SO_PATH.sub(lambda m: repr(path), code)
    monkeypatch.chdir(ROOT)
    # padded so that a traceback's line numbers are the markdown file's
    exec(compile("\n" * line + code, rel, "exec"), {"__name__": "__docs__"})
    capsys.readouterr()
