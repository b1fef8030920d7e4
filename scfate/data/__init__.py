"""Data layer: loading (local or Hub), schema normalisation, preparation (HVG, DE), splits, features, DataModule.

`python -m scfate.data dataset=NAME [overrides]` prepares a dataset and prints its summary.
"""

from scfate.data.spec import DataSpec, SplitSpec
from scfate.errors import DataError

__all__ = ["DataError", "DataSpec", "SplitSpec"]
