"""Errors the CLI shows as one line (no traceback; `MASKKIT_DEBUG=1` shows it) with a non-zero exit.

Each kind has its own exit code, so that scripts can tell them apart (README, "Exit codes"):
1 any other error, 2 invalid input (Typer's own usage errors use 2 too), 3 not found, 4 conflict, 5 busy,
6 a file-system fault (full disk, read-only, device gone; maskkit.cli._app), 130 interrupted.

Callers branch on the class, never on the message text:
- NotFound: a named thing (file, run, view, person, variant) does not exist;
- InvalidInput: a value, file content, option or config key is wrong;
- Conflict: the request contradicts what is recorded (a name taken, a stale view, a finished run);
- Busy: the catalog or a resource is held by someone else right now (try again).
"""


class MaskkitError(Exception):
    """A user-facing error: the message is the whole story."""

    exit_code = 1


class NotFound(MaskkitError):
    """`what` names the kind of thing missing ("person", "run", ...), for callers that skip unknown ones."""

    exit_code = 3

    def __init__(self, message: str, what: str | None = None):
        super().__init__(message)
        self.what = what


class InvalidInput(MaskkitError):
    exit_code = 2


class Conflict(MaskkitError):
    exit_code = 4


class Busy(MaskkitError):
    exit_code = 5
