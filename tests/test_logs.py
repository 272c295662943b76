"""Tests for how fcnseg speaks: loggers under "fcnseg", shown by the command line, and progress bars
on a terminal only."""

import io
import logging
import subprocess
import sys

import fcnseg
from fcnseg.logs import show_bars


def test_the_library_configures_no_logging_when_imported():
    code = (
        "import logging, fcnseg.cli, fcnseg.train.trainer\n"
        "print(logging.getLogger('fcnseg').handlers, logging.getLogger('fcnseg').level, logging.getLogger().handlers)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout == "[] 0 []\n"


def test_log_to_stderr_shows_status_lines_or_with_quiet_warnings_and_errors_only(capsys):
    log = logging.getLogger("fcnseg.somewhere")
    fcnseg.log_to_stderr()
    fcnseg.log_to_stderr()  # again: its handler replaced, not doubled
    log.info("a status line")
    log.warning("a problem")
    fcnseg.log_to_stderr(quiet=True)
    log.info("not shown")
    log.error("shown")
    assert capsys.readouterr().err == "a status line\nwarning: a problem\nerror: shown\n"


def test_bars_are_drawn_when_asked_for_on_a_terminal_only(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert (show_bars(True), show_bars(False)) == (False, False)
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert (show_bars(True), show_bars(False)) == (True, False)
