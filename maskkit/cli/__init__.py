"""The command line: thin modules over the library, one per command."""

from ._app import app
from . import catalog_cmd, demo, ingest, stats  # noqa: F401  (register the commands)


def main() -> None:
    app()
