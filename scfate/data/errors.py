"""The one exception type the data layer raises for bad input; its message names the problem and the fix."""


class DataError(ValueError):
    """Bad or missing input data. The message says what is wrong and how to fix it."""
