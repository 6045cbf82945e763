"""The one error type the data layer raises for bad input."""


class DatasetError(ValueError):
    """Bad input data: the message names the file and the problem on one line."""
