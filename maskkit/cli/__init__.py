"""The command line: thin modules over the library, one per command."""

from ._app import app
from . import ablate, audit, catalog_cmd, demo, evaluate, generate, group, ingest, preprocess, relabel, runs, split, stats, train  # noqa: F401  (register the commands)


def main() -> None:
    app()
