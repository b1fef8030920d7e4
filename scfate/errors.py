"""One error hierarchy: every error scFATE raises for bad input or bad usage is a ``ScfateError`` whose message
names the problem and the fix. The entry points (``friendly_errors``) print it as one line and exit with code 2;
anything else is a bug and keeps its traceback."""

from __future__ import annotations

import functools
import sys


class ScfateError(ValueError):
    """Base class: a problem the user can fix; the message says what is wrong and how to fix it."""


class DataError(ScfateError):
    """Bad or missing input data (a file, its columns, labels, genes, a split)."""


class UsageError(ScfateError):
    """A command line or call that asks for something scFATE does not do (unknown stage, key, value)."""


class CheckpointError(ScfateError):
    """A checkpoint that is missing, unreadable, unsafe, or of another format, dataset, split or backbone."""


def friendly_errors(fn):
    """Bad input and bad usage end with one clear message and exit code 2, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ScfateError as exc:
            print(f"\nscfate error: {exc}", file=sys.stderr)
            sys.exit(2)

    return wrapper
