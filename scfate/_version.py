"""The package version, in a module of its own so that every layer can read it without importing the package's
API (``scfate/__init__`` reaches up to ``scfate.api``)."""

__version__ = "0.1.0"
