"""The one exception type for bad user input.

Library code raises :class:`UserError` (a ``ValueError``) when a file, name,
shape or value given by the user is wrong. The CLI prints its message on one
line and exits with status 2; Python callers can catch it like any
``ValueError``.
"""

__all__ = ["UserError"]


class UserError(ValueError):
    """Bad input: a missing or corrupt file, an unknown name, a mismatch."""
