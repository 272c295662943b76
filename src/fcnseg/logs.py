"""How fcnseg speaks: every module logs to its own logger under ``"fcnseg"`` (status lines at INFO,
problems at WARNING), and progress bars are drawn only on a terminal.

The library configures no logging: a program that imports it shows what its own logging shows
(Python's default: warnings and errors). The ``fcnseg`` command calls :func:`log_to_stderr`, and a
script or notebook may call it too, to see the status lines as the command shows them.
"""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm

__all__ = ["log_to_stderr", "show_bars"]


class _AboveBars(logging.Handler):
    """Writes each record to stderr through tqdm, so that a line never cuts through a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging's contract: a failed emit reports itself and never raises
            self.handleError(record)


class _Plain(logging.Formatter):
    """A status line as it is; a warning or an error after its level (``warning: ...``)."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {message}"


def log_to_stderr(quiet: bool = False) -> None:
    """Show fcnseg's messages on stderr, above any progress bar: status lines and up, or with
    ``quiet`` warnings and errors only. Calling it again replaces the handler it added before;
    other handlers are left as they are."""
    logger = logging.getLogger("fcnseg")
    for handler in [h for h in logger.handlers if isinstance(h, _AboveBars)]:
        logger.removeHandler(handler)
    handler = _AboveBars()
    handler.setFormatter(_Plain())
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def show_bars(progress: bool) -> bool:
    """Whether to draw progress bars: when ``progress`` asks for them and stderr is a terminal. In a
    file or a pipe a bar's redraws would be carriage returns and escape codes, not lines."""
    return progress and sys.stderr is not None and sys.stderr.isatty()
