"""Shared pytest fixtures."""

import logging
from pathlib import Path

import pytest
import torch
from caffe_reference import restore_all
from tiny_nets import ARCHS, tiny_fcn

import fcnseg


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Tests use tiny nets, which run faster on one thread, above all when other processes share the cores;
    OMP_NUM_THREADS keeps it so in the commands they run (``--threads``' default) and in subprocesses."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def fcnseg_logging():
    """Each test starts with the "fcnseg" logger as the library leaves it: the handler and level that
    a test's ``fcnseg.cli.main`` set up do not reach the next test."""
    logger = logging.getLogger("fcnseg")
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


@pytest.fixture(scope="session")
def caffe_fixtures(tmp_path_factory) -> Path:
    """A folder of files written by the real Caffe (``fixtures/caffe/README.md``), restored and checked."""
    return restore_all(tmp_path_factory.mktemp("caffe"))


@pytest.fixture(params=ARCHS)
def tiny_model(request) -> fcnseg.FCN:
    """The tiny net of each registered architecture in turn (3 classes, seeded): the shared model tests."""
    return tiny_fcn(request.param, num_classes=3)
