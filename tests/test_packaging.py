"""pyproject.toml lists every package: with an explicit `packages` list, a folder left out is
silently missing from a wheel (`pip install .`), though the editable install of `make` works."""

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _folder(package: str) -> Path:
    top, *rest = package.split(".")
    return ROOT / SETUPTOOLS["package-dir"][top] / Path(*rest)


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
