"""Shared pytest fixtures."""

from pathlib import Path

import pytest
import torch
from caffe_reference import restore_all


@pytest.fixture(autouse=True)
def one_thread():
    """Tests use tiny nets, which run faster on one thread, above all when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def caffe_fixtures(tmp_path_factory) -> Path:
    """A folder of files written by the real Caffe (``fixtures/caffe/README.md``), restored and checked."""
    return restore_all(tmp_path_factory.mktemp("caffe"))
