"""Suite-wide settings: CPU by default, Triton through its interpreter, GPU tests skipped without CUDA."""

import os

import pytest
import torch

# Triton reads this when a kernel is decorated, so it must be set before atlas.kernels is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
