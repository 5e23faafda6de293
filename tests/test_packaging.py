"""Two distributions: qvit (pyproject.toml: training + compile) and qvit-edge (edge_runtime/
pyproject.toml: the device runtime). Each lists every package it has: with an explicit `packages`
list, a folder left out is silently missing from a wheel, though the editable install of `make`
works. What the runtime wheel really holds: tests/test_wheels.py."""

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent
QVIT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EDGE_PROJECT = tomllib.loads((ROOT / "edge_runtime" / "pyproject.toml").read_text())
SETUPTOOLS = QVIT["tool"]["setuptools"]


def _folder(package: str) -> Path:
    """The folder of a package: its longest mapped prefix in package-dir, then the rest."""
    parts = package.split(".")
    for n in range(len(parts), 0, -1):
        mapped = SETUPTOOLS["package-dir"].get(".".join(parts[:n]))
        if mapped is not None:
            return ROOT / mapped / Path(*parts[n:])
    raise AssertionError(f"{package} has no package-dir mapping")


def test_every_python_package_folder_is_listed():
    listed = set(SETUPTOOLS["packages"])
    for top, folder in SETUPTOOLS["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            name = ".".join([top, *rel.parts])
            assert name in listed, f"{name} ({init.parent}) is not in pyproject's packages"


def test_every_listed_package_and_its_data_exist():
    for package in SETUPTOOLS["packages"]:
        assert _folder(package).is_dir(), package
    for package, patterns in SETUPTOOLS["package-data"].items():
        for pattern in patterns:
            assert list(_folder(package).glob(pattern)), f"{package}: nothing matches {pattern}"


def test_the_runtime_is_its_own_distribution_and_qvit_depends_on_it():
    edge, qvit = EDGE_PROJECT["project"], QVIT["project"]
    assert edge["name"] == "qvit-edge" and qvit["name"] == "qvit"
    # released together: qvit pins the runtime of its own version
    assert f"qvit-edge=={edge['version']}" in qvit["dependencies"] and qvit["version"] == edge["version"]
    assert sorted(d.split(">")[0] for d in edge["dependencies"]) == ["cffi", "numpy", "pillow"]
    assert list(edge["scripts"]) == ["qvit-edge"] and list(qvit["scripts"]) == ["qvit"]
    assert EDGE_PROJECT["tool"]["setuptools"]["packages"] == ["qvit_edge"]
    assert EDGE_PROJECT["tool"]["setuptools"]["package-dir"] == {"qvit_edge": "."}
    assert (ROOT / "edge_runtime" / edge["readme"]).is_file()
    # a flat package: a subpackage would need listing
    inits = [p for p in (ROOT / "edge_runtime").rglob("__init__.py") if "build" not in p.parts]
    assert inits == [ROOT / "edge_runtime" / "__init__.py"]
    # no package of one distribution is also in the other
    assert "qvit_edge" not in SETUPTOOLS["package-dir"] and not any(
        p.startswith("qvit_edge") for p in SETUPTOOLS["packages"])


# The runtime wheel holds only what the device runs: numpy, cffi and Pillow, never the stages
# before it (they need torch / TVM, which a board does not have).
EDGE = ROOT / "edge_runtime"
NOT_ON_DEVICE = ("qvit", "qvit_compile", "torch", "tvm", "tvm_ffi", "timm", "onnx", "onnxruntime")


def _imported_modules(path: Path) -> set[str]:
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_the_device_runtime_imports_nothing_of_the_other_stages():
    for path in sorted(EDGE.rglob("*.py")):
        if "build" in path.relative_to(EDGE).parts:
            continue
        bad = sorted(m for m in _imported_modules(path) if m.split(".")[0] in NOT_ON_DEVICE)
        assert not bad, f"{path.relative_to(ROOT)} imports {', '.join(bad)}"


def test_the_integer_model_and_the_kernel_benchmark_live_outside_the_runtime():
    for name in ("intmodel.py", "reference.py", "bench_kernels.py", "intmodel"):
        assert not (EDGE / name).exists(), f"edge_runtime/{name} belongs to qvit_compile"
    assert (ROOT / "compile" / "intmodel" / "__init__.py").is_file()
