"""Shared pytest fixtures."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def caffe_fixtures() -> Path:
    """Files written by the real Caffe; ``shared/`` lies beside the clone (see its README.md)."""
    return Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "caffe"
