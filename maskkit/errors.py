"""Errors the CLI shows as one line (no traceback) with a non-zero exit."""


class MaskkitError(Exception):
    """A user-facing error: bad input, missing file, unknown name. The message is the whole story."""

    exit_code = 1
