"""Shared pytest fixtures."""

import logging
import socket
from pathlib import Path

import pytest
import torch
from caffe_reference import restore_all
from tiny_nets import ARCHS, tiny_fcn

import fcnseg

LOOPBACK = {"localhost", "127.0.0.1", "::1"}
NOWHERE = ("127.0.0.1", 9)
"""The proxy that the commands tests run are given for every address but the loopback's: a port
nothing listens on (discard), so that a download a test did not point at the local server fails
at once in a subprocess too."""


@pytest.fixture(autouse=True, scope="session")
def no_network():
    """Tests never reach the network: a name other than the loopback's does not resolve and a
    connection elsewhere is refused, as on a machine offline; the commands tests run (subprocesses)
    send every request but the loopback's to :data:`NOWHERE`. Downloads are tested against the
    local server of ``http_server.py``."""
    resolve, connect = socket.getaddrinfo, socket.socket.connect

    def local_only(host, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and name not in LOOPBACK:
            raise socket.gaierror(
                socket.EAI_NONAME, f"Name or service not known (tests stay offline: {host})"
            )
        return resolve(host, *args, **kwargs)

    def loopback_only(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and (
            address[0] not in LOOPBACK or tuple(address[:2]) == NOWHERE
        ):
            raise ConnectionRefusedError(f"tests stay offline: no connection to {address[0]}")
        return connect(sock, address)

    proxy = "http://{}:{}".format(*NOWHERE)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", local_only)
        patch.setattr(socket.socket, "connect", loopback_only)
        for name in ("http_proxy", "https_proxy", "ftp_proxy", "all_proxy"):
            patch.setenv(name, proxy)
            patch.setenv(name.upper(), proxy)
        for name in ("no_proxy", "NO_PROXY"):
            patch.setenv(name, ",".join(sorted(LOOPBACK)))
        yield


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
