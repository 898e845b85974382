"""Shared pytest markers."""

from __future__ import annotations

import shutil

import pytest
import torch

# torch.compile (Inductor) builds C++ kernels on the CPU; .ci/run installs g++, a bare machine may lack it.
needs_cxx = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("gcc") is None, reason="Inductor needs a C++ compiler"
)

# Tests of code that only runs on a GPU (CUDA graphs, CUDA streams): `pytest -m gpu` on the GPU machine
# (bench/gpu_loadtest.sh runs them and fails when they fail); skipped, with this reason, on CPU-only machines.
gpu = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run `pytest -m gpu` on one)"),
]
