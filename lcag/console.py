"""How every console command ends: lcag's errors as one line on stderr, never a traceback.

    lcag-evaluate: error: runs/x/best.ckpt: not a readable checkpoint (truncated or corrupt: ...)

Each entry point (``lcag``, ``lcag-evaluate``, ``lcag-generate``, ``lcag-hpo``) runs its work
through :func:`run_console`. An :class:`~lcag.errors.LCAGError` (bad input, a missing or corrupt
file, an impossible config) is printed as ``<prog>: error: <message>`` and the command exits
with :data:`EXIT_ERROR`; Ctrl-C exits with :data:`EXIT_INTERRUPTED`. Set ``LCAG_TRACEBACK=1``
to see the full traceback instead, for debugging. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from lcag.errors import LCAGError

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "TRACEBACK_ENV", "one_line", "run_console"]

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
TRACEBACK_ENV = "LCAG_TRACEBACK"


def one_line(exc: BaseException) -> str:
    """The error's message on one line.

    An exception re-raised from a DataLoader worker carries the worker's whole traceback as its
    message; its last line holds the original message.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if len(lines) > 1 and "Traceback (most recent call last)" in str(exc):
        last = lines[-1]
        name, _, message = last.partition(": ")
        return message if message and name.split(".")[-1] == type(exc).__name__ else last
    return " ".join(lines)


def run_console(
    prog: str,
    work: Callable[[], int | None],
    user_errors: tuple[type[BaseException], ...] = (),
) -> int:
    """Run ``work`` and turn its outcome into an exit status (0 when it returns ``None``).

    Args:
        prog: the command's name, the first word of its error line.
        work: the command's job; returns an exit status or ``None``.
        user_errors: other exception types that mean a mistake of the user's, not a bug
            (e.g. Lightning's ``MisconfigurationException``), reported like lcag's own.
    """
    try:
        status = work()
    except (LCAGError, *user_errors) as exc:
        if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0 if status is None else int(status)
