"""Shared pytest fixtures."""

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tests use tiny nets, which run faster on one thread, above all when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def caffe_fixtures() -> Path:
    """Files written by the real Caffe; ``shared/`` lies beside the clone (see its README.md)."""
    folder = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "caffe"
    if not folder.is_dir():
        pytest.fail(
            f"the Caffe reference files are not in {folder}: the conformance tests need the shared/ "
            "folder beside this clone",
            pytrace=False,
        )
    return folder
