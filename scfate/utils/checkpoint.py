"""The one way scFATE reads a torch file (checkpoints, couplings, user embeddings): ``weights_only=True`` and a
``CheckpointError`` naming the problem and the fix for a missing, empty, truncated, corrupt or unsafe file.

torch's own messages for these cases are a bare ``EOFError``, ``PytorchStreamReader failed ...`` or, for a file
that asks to unpickle Python objects, advice to retry with ``weights_only=False``, which would run whatever the
file holds. None of that text is passed on: the errors are raised ``from None`` so that not even a traceback
repeats the advice.
"""

from __future__ import annotations

import pickle
import re
import struct
import zipfile
from pathlib import Path

from scfate.errors import CheckpointError

# what torch.load raises on bytes that are not (or no longer) a torch file; anything else is a bug of ours
_CORRUPT = (RuntimeError, EOFError, OSError, KeyError, IndexError, ValueError, TypeError, AttributeError,
            struct.error, UnicodeDecodeError, zipfile.BadZipFile)


def _refused_global(message: str) -> str | None:
    """The Python global (class or function) the weights-only unpickler refused, if that is why it failed."""
    m = re.search(r"GLOBAL ([\w.]+)", message)
    return m.group(1) if m else None


def safe_torch_load(path: str | Path, what: str = "scFATE checkpoint", fix: str = ""):
    """``torch.load(path, map_location="cpu", weights_only=True)``, or a ``CheckpointError`` that says what is
    wrong with the file. ``what`` names the kind of file in the messages, ``fix`` adds how to get a good one."""
    import torch

    path = Path(path)
    fix = f" {fix}" if fix else ""
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path} is {'a folder' if path.is_dir() else 'missing'}.{fix}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} ({what}) is empty (0 bytes): it was cut off while being written, "
                              f"copied or downloaded. Re-download or re-export it.{fix}")
    try:
        with open(path, "rb") as f:  # an OSError here is the disk's or the permissions'; below, the bytes'
            f.read(1)
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read ({type(exc).__name__}: {exc.strerror or exc}). Check its "
                              f"permissions and the disk.{fix}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _refused_global(str(exc))
        if refused is None:  # an opcode the unpickler does not know: random or cut-off bytes
            raise CheckpointError(f"{path} ({size} bytes) is not a readable {what}: its contents are corrupt. "
                                  f"Re-download or re-export it.{fix}") from None
        raise CheckpointError(f"{path} is not a safe {what}: it asks to load the Python object {refused!r}, which "
                              "is neither a tensor nor a plain value, so it was refused unread (loading it could "
                              "run code; the file is crafted or corrupt). Use a file written by scFATE itself "
                              f"(train.py, reflow.py, or a release on the Hub).{fix}") from None
    except _CORRUPT as exc:
        # a zip archive without its end (an interrupted copy: torch's reader says RuntimeError or, for a larger
        # file, OSError "Invalid argument") or a legacy pickle that stops early
        truncated = (EOFError, RuntimeError, OSError, zipfile.BadZipFile)
        why = "it is truncated" if isinstance(exc, truncated) else "it is corrupt"
        raise CheckpointError(f"{path} ({size} bytes) is not a readable {what}: {why} ({type(exc).__name__}). "
                              f"Re-download or re-export it.{fix}") from None
