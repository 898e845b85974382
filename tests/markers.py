"""Shared pytest markers."""

from __future__ import annotations

import shutil

import pytest

# torch.compile (Inductor) builds C++ kernels on the CPU; .ci/run installs g++, a bare machine may lack it.
needs_cxx = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("gcc") is None, reason="Inductor needs a C++ compiler"
)
