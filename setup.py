# Only job: build the native kernels (cffi, API mode) as qvit_edge._native at install time.
# All package metadata lives in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["native/build_ffi.py:ffibuilder"])
