"""The Typer application, its global options and the one-line error handling."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn
from typer.core import TyperGroup

from ..errors import InvalidInput, MaskkitError

# In pipes and logs rich would squeeze tables into 80 columns; give them room instead.
_PIPE_WIDTH = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "160"))
console = Console(width=_PIPE_WIDTH)
err_console = Console(stderr=True, width=_PIPE_WIDTH if not sys.stderr.isatty() else None)


class MaskkitGroup(TyperGroup):
    """Turns MaskkitError into one red line on stderr and exit code 1, Ctrl-C into exit 130."""

    def invoke(self, ctx):
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()  # `maskkit runs --json > /dev/full` fails here, inside the one-line handling
            return result
        except OSError as exc:  # the safety net: a file system fault no check caught is still one line
            if os.environ.get("MASKKIT_DEBUG", "") not in ("", "0"):
                import traceback

                traceback.print_exc()
            where = f"{exc.filename}: " if exc.filename else ""
            _silence_stdout()
            err_console.print(f"[bold red]error:[/] {where}{exc.strerror or exc}", highlight=False, soft_wrap=True)
            sys.exit(EXIT_IO)
        except MaskkitError as exc:
            if os.environ.get("MASKKIT_DEBUG", "") not in ("", "0"):
                import traceback

                traceback.print_exc()
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt as exc:
            run = getattr(exc, "run", None)
            if run and not getattr(exc, "resumable", True):
                err_console.print(f"[yellow]interrupted[/]: run {run} stopped before its first epoch ended (nothing "
                                  "to resume): run the same command again")
            elif run:
                err_console.print(f"[yellow]interrupted[/]: run {run} keeps its last finished epoch; continue it with "
                                  f"maskkit train --resume {run}")
            else:
                err_console.print("[yellow]interrupted[/]: nothing half-written; run the same command again to resume")
            sys.exit(130)
        finally:  # give the catalog's connections back (a PostgreSQL server counts them)
            if isinstance(ctx.obj, State) and ctx.obj._catalog is not None:
                ctx.obj._catalog.dispose()


EXIT_IO = 6  # a file system fault (full disk, read-only, device gone)


def _silence_stdout() -> None:
    """After a failed write to stdout, Python would fail again flushing it at exit: point it at /dev/null."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


app = typer.Typer(
    cls=MaskkitGroup,
    help="maskkit: mask / gender / age classification over one catalog. "
    "Typical use: ingest -> stats -> audit/relabel -> preprocess -> group -> split -> train -> eval -> submit.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class State:
    def __init__(self, catalog: Optional[str]):
        self.catalog_arg = catalog
        self._catalog = None

    @property
    def catalog(self):
        """The catalog, which must exist (commands other than ingest never create one by a typo)."""
        return self.open(create=False)

    def open(self, create: bool = False):
        if self._catalog is None:
            from ..catalog import open_catalog

            self._catalog = open_catalog(self.catalog_arg, create=create)
        return self._catalog


@app.callback()
def main_options(
    ctx: typer.Context,
    catalog: Optional[str] = typer.Option(
        None, "--catalog", envvar="MASKKIT_CATALOG", show_envvar=True,
        help="Catalog file or SQLAlchemy URL (default ./catalog.db).",
    ),
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    if version:
        from .. import __version__

        console.print(f"maskkit {__version__}")
        raise typer.Exit()
    ctx.obj = State(catalog)


def state(ctx: typer.Context) -> State:
    root = ctx.find_root()
    if not isinstance(root.obj, State):
        root.obj = State(None)
    return root.obj


@contextmanager
def progress_bar(description: str = "working"):
    """A rich progress bar; yields a callback(phase, done, total) for library code."""
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=err_console, transient=False, disable=not err_console.is_terminal,
    ) as bar:
        tasks: dict[str, int] = {}

        def update(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(f"{description}: {phase}", total=total, rate="")
            task = tasks[phase]
            speed = bar.tasks[task].speed if bar.tasks[task].speed else None
            bar.update(task, completed=done, total=total, rate=f"{speed:,.0f}/s" if speed else "")

        yield update


# ---------------------------------------------------------------- option checks (when the command starts)

def output_file_option(value):
    """An output file option (--sheet, --out FILE...): checked before any work, so a bad path never costs a run."""
    if value is None:
        return value
    from ..files import output_file

    return output_file(value, "output")


def output_dir_option(value):
    """An output folder option (predict --out, ...): made, or refused when it is a file, before any work."""
    if value is None:
        return value
    from ..files import output_dir

    return output_dir(value, "output folder")


def runs_dir_option(value):
    """--runs-dir: refused at once when it names a file (made later, by the run, when missing)."""
    if value is not None and value.exists() and not value.is_dir():
        raise InvalidInput(f"runs folder {value} is a file, not a folder")
    return value


def check_device(value: str) -> str:
    """--device: cpu, cuda or cuda:N (the config's train.device rule, without auto), and CUDA only where torch
    sees a device."""
    from ..train.schema import DEVICE_PATTERN

    if value is None:
        return value
    if value == "auto" or not DEVICE_PATTERN.match(value):
        raise InvalidInput(f"--device must be cpu, cuda or cuda:N, got {value!r}")
    if value.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise InvalidInput(f"--device {value}: torch sees no CUDA device here (use --device cpu)")
        index = int(value.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise InvalidInput(f"--device {value}: there are {torch.cuda.device_count()} CUDA devices")
    return value


def check_tta(value: Optional[str]) -> Optional[str]:
    if value is not None and value != "hflip":
        raise InvalidInput(f"--tta must be hflip (average with the mirrored image), got {value!r}")
    return value


def check_vote(value: str) -> str:
    if value not in ("soft", "hard"):
        raise InvalidInput(f"--vote must be soft or hard, got {value!r}")
    return value


def print_blend(name: str, weights: dict[str, float], members_oof: dict[str, float], raw: float, cross: float,
                decision: dict, *, weights_tuned: bool, runs: int, labels: dict | None = None) -> None:
    """A recorded blend of k-fold ensembles in two lines (`maskkit ensemble`, and `train --folds` with
    model.blend_backbones): its members and weights, then every out-of-fold figure, the one to trust last.
    `raw`: the blend's argmax; `cross`: with what was tuned (weights, offsets) tuned on the other people;
    `labels`: that figure's per-label F1 when known."""
    console.print(f"blend [bold]{name}[/] of {len(weights)} k-fold ensembles ({runs} runs), weights "
                  + ", ".join(f"{k} {v:.2f}" for k, v in weights.items()) + " (tuned out-of-fold)" * weights_tuned,
                  highlight=False)
    by = decision["offsets"]
    tuned_here = [part for part, tuned in (("weights", weights_tuned), ("offsets", by != "none")) if tuned]
    line = ("out-of-fold macro F1: " + ", ".join(f"{k} {v:.4f}" for k, v in members_oof.items())
            + f"; blend {raw:.4f}" + " (weights tuned on these people)" * weights_tuned)
    if tuned_here:
        per_label = (f" (mask {labels['mask_f1']:.3f}, gender {labels['gender_f1']:.3f}, age {labels['age_f1']:.3f})"
                     if labels else "")
        offsets = (f"offsets by {by} " + ("kept" if decision["applied"] else "not kept")) if by != "none" \
            else "no offsets"
        line += (f"; {cross:.4f}{per_label} with {' and '.join(tuned_here)} tuned on the other people (cross-fitted, "
                 f"the figure to trust; {offsets})")
    else:
        line += " (given weights, no offsets: nothing tuned)"
    console.print(line, highlight=False)


def settled_left_out(catalog, include_reviewed: bool) -> set[int]:
    """The people label suspects leave out: those a reviewer settled since their labels last changed
    (review.queue.settled_people), none with --include-reviewed."""
    from ..review.queue import settled_people

    return set() if include_reviewed else settled_people(catalog)


def print_left_out(left_out: set[int]) -> None:
    """One line saying how many settled people the suspects leave out (nothing when none)."""
    if left_out:
        n = len(left_out)
        console.print(f"not listed: {n} {'person' if n == 1 else 'people'} a reviewer settled since their labels "
                      "last changed (--include-reviewed lists them too)", highlight=False)
