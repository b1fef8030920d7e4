"""scFATE: zero-shot single-cell perturbation prediction by Lie-algebraic conditional flow matching.

Heavy dependencies (scanpy, Lightning, wandb) are imported inside the functions that need them so that
``import scfate`` and the entry points' ``--help`` stay fast.
"""

from scfate._version import __version__  # noqa: F401  (re-exported)


def load(path_or_hf):
    """Load a trained flow head (path, run folder, or hf://OWNER/NAME/flow_heads/...) as a predictor."""
    from scfate.api import load as _load

    return _load(path_or_hf)
