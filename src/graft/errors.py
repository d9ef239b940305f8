"""The one exception graft raises for bad input: a one-line message naming the file and the fix."""


class GraftError(Exception):
    """User-facing error. The CLI prints ``str(error)`` on one line and exits with status 2."""
