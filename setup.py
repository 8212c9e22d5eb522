"""Builds the cffi extension during `pip install` (cffi's setuptools hook)."""
from setuptools import setup

setup(cffi_modules=["mingpt_c/_build.py:ffibuilder"])
