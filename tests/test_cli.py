"""The two command lines: help, version, and the one-line errors of verbs not built yet."""
import subprocess
import sys

import pytest

from qvit.cli import VERBS as QVIT_VERBS
from qvit_edge.cli import VERBS as EDGE_VERBS


def _run(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("pkg,verbs", [("qvit", QVIT_VERBS), ("qvit_edge", EDGE_VERBS)])
def test_help_lists_every_verb(pkg, verbs):
    r = _run(pkg, "--help")
    assert r.returncode == 0
    for v in verbs:
        assert v.name in r.stdout


def test_edge_help_does_not_import_torch():
    code = ("import sys; from qvit_edge.cli import main\n"
            "try:\n main(['--help'])\nexcept SystemExit: pass\nprint('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip().endswith("False")


def test_unknown_verb_fails():
    r = _run("qvit_edge", "frobnicate")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr


def test_no_verb_prints_help_and_fails():
    r = _run("qvit")
    assert r.returncode == 2
    assert "VERB" in r.stdout
