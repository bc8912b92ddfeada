"""Shared pytest fixtures."""

import pytest

from tests.runner_helpers import glue_dir, runner_env  # noqa: F401 (fixtures, shared by every test module)
from tests.tiny import ARCHS, tiny_model_dir


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """``{arch: folder}`` of tiny random bare encoders (no head) for bert, roberta, mpnet, built once."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {arch: tiny_model_dir(root / arch, arch) for arch in ARCHS}
