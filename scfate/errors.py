"""One error hierarchy: every error scFATE raises for bad input or bad usage is a ``ScfateError`` whose message
names the problem and the fix. The entry points (``friendly_errors``) print it as one line and exit with code 2;
anything else is a bug and keeps its traceback."""

from __future__ import annotations

import contextlib
import difflib
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


def hydra_entry(config_path: str, config_name: str):
    """``@hydra.main`` of the entry points (train.py, evaluate.py, reflow.py, ...) with :func:`friendly_errors` on
    both sides: inside, the task's errors end as one line (outside they would first pass Hydra's "Error executing
    job" report); outside, it sees the errors Hydra reports itself while it composes the command line."""
    import hydra

    def decorate(fn):
        return friendly_errors(hydra.main(version_base="1.3", config_path=config_path,
                                          config_name=config_name)(friendly_errors(fn)))

    return decorate


def friendly_errors(fn):
    """Bad input and bad usage end with one clear message and exit code 2, not a traceback: a ScfateError, a
    ``???`` config value left unset, a mistyped config key (see :func:`user_message`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _through_hydra():
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                _exit_if_users_error(exc)
                raise

    return wrapper


def _exit_if_users_error(exc: BaseException) -> None:
    message = user_message(exc)
    if message is not None:
        print(f"\nscfate error: {message}", file=sys.stderr)
        sys.exit(2)


@contextlib.contextmanager
def _through_hydra():
    """Route the errors Hydra catches and prints itself (exit code 1, the ``+key`` hint) through
    :func:`user_message` first. Hydra composes the command line before any task runs, and its private
    ``run_and_report`` is the one place those errors pass: it is wrapped for this call only, and left alone where
    Hydra is not loaded or has no such function (then Hydra's own report stands)."""
    utils = sys.modules.get("hydra._internal.utils")
    original = getattr(utils, "run_and_report", None)
    if original is None:
        yield
        return

    def run_and_report(func):
        def checked():
            try:
                return func()
            except Exception as exc:
                _exit_if_users_error(exc)
                raise

        return original(checked)

    utils.run_and_report = run_and_report
    try:
        yield
    finally:
        utils.run_and_report = original


def user_message(exc: BaseException) -> str | None:
    """The one-line message for an error the user can fix, or None for a bug (which keeps its traceback)."""
    if isinstance(exc, ScfateError):
        return str(exc)
    name = type(exc).__name__
    if name == "MissingMandatoryValue" and getattr(exc, "full_key", None):
        key = exc.full_key
        value = "FILE" if key.rsplit(".", 1)[-1] in ("path", "file") else "VALUE"
        return (f"{key} is required and has no value (??? in the config): add {key}={value} to the command line"
                f"{' (the .h5ad to read)' if key == 'data.path' else ''}.")
    cause = exc.__cause__
    if name == "ConfigCompositionException" and getattr(cause, "parent_node", None) is not None \
            and getattr(cause, "full_key", None):
        return _unknown_key(cause.full_key, cause.parent_node)
    return None


def _unknown_key(full_key: str, parent) -> str:
    """A mistyped override (``flow.epoch=3``): the keys that node does have, and the closest keys of the whole
    config. Hydra's own hint, ``+flow.epoch=3``, adds a new key instead, which the run would most likely ignore
    without a word."""
    from omegaconf import OmegaConf

    node, _, key = full_key.rpartition(".")
    get_root = getattr(parent, "_get_root", lambda: parent)  # OmegaConf's; without it, only the parent is searched
    root = OmegaConf.to_container(get_root(), resolve=False)
    root.pop("hydra", None)
    valid = [k for k in (parent.keys() if node else root) if not str(k).startswith(("_", "hydra"))]
    close = difflib.get_close_matches(full_key, list(_dotted(root)), n=3, cutoff=0.6)
    close += [k for k in difflib.get_close_matches(key, list(_dotted(root)), n=3, cutoff=0.6) if k not in close]
    hint = f" Did you mean {' or '.join(close[:3])}?" if close else ""
    where = f"{node!r} has" if node else "the top level has"
    return (f"{full_key} is not a config key: {where} {sorted(str(k) for k in valid)}.{hint} "
            f"(Hydra's hint '+{full_key}=...' would add it as a new key, not set an existing one.)")


def _dotted(tree, prefix: str = ""):
    """Every key of a nested config as ``a.b.c``, nodes included (``epochs`` as well as ``epochs.flow``)."""
    for k, v in tree.items():
        yield f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _dotted(v, f"{prefix}{k}.")
