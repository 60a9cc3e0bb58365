"""Only here to pass ``cffi_modules``, which cannot live in pyproject.toml."""
from setuptools import setup

setup(cffi_modules=["csrc/build_memcore.py:ffibuilder"])
