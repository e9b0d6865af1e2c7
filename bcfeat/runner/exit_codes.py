"""Exit statuses and error reporting shared by every bcfeat command (their argument types are in
:mod:`bcfeat.runner.arguments`).

``bcfeat ...``, ``python -m bcfeat.runner`` and ``python -m bcfeat.runner.detector`` all end with

====  =====================================================================================
0     success
1     the command ran and found a problem (``bcfeat verify``: files that do not match;
      the pipeline: a stage that failed), or an unexpected error (a bug: run again with
      ``--verbose`` for the traceback)
2     a usage error: a bad option or value, a missing or unreadable input, a refused
      model file; one line on stderr says what and where, and nothing was written
====  =====================================================================================

A user's mistake never shows a traceback; a bug shows one only with ``--verbose``.

The library reports through :mod:`logging` (one ``logger`` per module) and never prints; a command
decides what the user sees with :func:`configure_logging`: the package's INFO messages and every
WARNING on stderr, one line each; with ``--verbose`` the package's DEBUG messages and tracebacks too.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

OK, PROBLEM, USAGE = 0, 1, 2

logger = logging.getLogger(__name__)


class _OneLine(logging.Formatter):
    """A record as one line: its message without the traceback (``--verbose`` shows that)."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def configure_logging(verbose: bool = False) -> None:
    """Show the log on stderr: bcfeat's INFO (DEBUG with ``verbose``) and every library's WARNING.

    Without ``verbose`` each record is one line and never a traceback. A root logger that already
    has handlers (the caller's own set-up, or pytest's) is left as it is.
    """
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    if verbose:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(_OneLine("%(levelname)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # other libraries: warnings only
    logging.getLogger("bcfeat").setLevel(logging.DEBUG if verbose else logging.INFO)


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean "the input was wrong", reported in one line with exit 2."""
    from bcfeat.data.download import DownloadError
    from bcfeat.data.registry import DatasetNotFound
    from bcfeat.data.root import DataRootNotFound
    from bcfeat.data.splits import SplitMismatch

    # ValueError covers ModelFileError, ImageDecodeError, ChecksumMismatch and the config checks.
    return (DataRootNotFound, DatasetNotFound, DownloadError, SplitMismatch, FileNotFoundError,
            NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError, KeyError, ValueError)


def one_line(error: BaseException) -> str:
    """The message of an exception, as one line (a KeyError's without its quotes)."""
    message = error.args[0] if isinstance(error, KeyError) and error.args else error
    return " ".join(str(message).split("\n"))


def run_command(prog: str, func: Callable[[], int | None], verbose: bool = False) -> int:
    """Run ``func`` and turn its errors into the exit statuses above, with one line on stderr.

    Parameters
    ----------
    prog : str
        Prefix of the error line, e.g. ``"bcfeat extract"``.
    func : callable
        The command; returns its exit status (None means 0).
    verbose : bool
        Re-raise unexpected errors so their traceback is shown.
    """
    try:
        status = func()
    except user_errors() as error:
        if verbose:
            logger.exception("%s failed", prog)
        print(f"{prog}: {one_line(error)}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug: say so, traceback on request
        if verbose:
            raise
        print(f"{prog}: unexpected error ({type(error).__name__}: {one_line(error)}); "
              "run again with --verbose for the traceback", file=sys.stderr)
        return PROBLEM
    return OK if status is None else int(status)
