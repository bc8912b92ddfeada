"""Shared pytest fixtures."""

import pytest
import torch

from tests.runner_helpers import glue_dir, runner_env  # noqa: F401 (fixtures, shared by every test module)
from tests.tiny import ARCHS, tiny_model_dir


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` are skipped where torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """``{arch: folder}`` of tiny random bare encoders (no head) for bert, roberta, mpnet, built once."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {arch: tiny_model_dir(root / arch, arch) for arch in ARCHS}


@pytest.fixture(scope="module")
def single_thread():
    """Run the lora tests on one intra-op thread, restoring the setting afterwards.

    These tests use small matrices, where OpenMP/MKL threading only costs: on a busy 2-core machine a
    multi-threaded float64 SVD of a 384x384 weight took ~9 s instead of ~0.2 s on one thread.
    A module applies it with `pytestmark = pytest.mark.usefixtures("single_thread")`.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
