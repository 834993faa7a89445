"""`maskkit audit`: review people on a local web page (or in the terminal) and fix labels as you go."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

import typer

from ..errors import InvalidInput, MaskkitError, NotFound
from ._app import app, console, print_left_out, progress_bar, settled_left_out, state

TERMINAL_HELP = (
    "a accept · g flip gender · age N · band young|middle|old · mask N STATE (N = image 1..7) · "
    "swap · s skip · b back · note TEXT · bad · q quit"
)


@app.command()
def audit(
    ctx: typer.Context,
    start: Optional[str] = typer.Option(None, help="First person id of the range (e.g. 000123)."),
    count: Optional[int] = typer.Option(None, help="How many people from --start."),
    reviewer: Optional[str] = typer.Option(None, help="Your name (default $MASKKIT_USER or $USER)."),
    port: int = typer.Option(8765, min=1, max=65535, help="Port of the review page."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (keep 127.0.0.1 and use SSH port forwarding; 0.0.0.0 exposes the page to the network, token still needed)."),
    queue: str = typer.Option("id", help="Order: id (from --start), unreviewed (nobody reviewed yet), suspects."),
    run: Optional[str] = typer.Option(None, help="With --queue suspects: the run, ensemble, latest (the default when one is finished) or oof .npz whose out-of-fold probabilities rank people together with the face prior; prior: before any training, the face networks and the copy check."),
    evidence: str = typer.Option("combined", help="With --queue suspects: combined (probabilities + face networks), model or prior."),
    field: Optional[str] = typer.Option(None, help="With --queue suspects: start on one field's own list (gender, age or mask: that field's evidence alone); the page switches between them and the one ranking."),
    include_reviewed: bool = typer.Option(False, help="With --queue suspects: also list people a reviewer settled (accept, fix, bad) since their labels last changed."),
    no_web: bool = typer.Option(False, "--no-web", help="Terminal flow: a contact-sheet PNG per person and a prompt."),
    sheet_dir: Path = typer.Option(Path("runs/audit"), help="Where --no-web writes contact sheets."),
    assign: Optional[str] = typer.Option(None, help="Share the not-yet-reviewed people out: alice,bob,carol."),
    show_status: bool = typer.Option(False, "--status", help="Per-reviewer progress, fixes made, people left."),
    everyone: bool = typer.Option(False, "--all", help="Review the whole range, not only your assigned share."),
) -> None:
    """Review people one at a time; every verdict and fix is saved the moment it is made."""
    from ..catalog.relabel import default_actor
    from ..review import assign as sharing
    from ..review.queue import build_queue

    catalog = state(ctx).catalog
    reviewer = reviewer or default_actor()
    if queue == "suspects":  # the one ranking and each field's own list, from one computation of the evidence
        from ..evaluate.suspects import ALL_FIELDS, default_source, suspect_views

        left_out = settled_left_out(catalog, include_reviewed)
        with progress_bar("suspects") as progress:
            lists = suspect_views(catalog, run or default_source(catalog), count, progress, evidence=evidence,
                                  field=field, leave_out=left_out)
        shown = field or ALL_FIELDS
        if not lists[ALL_FIELDS]:
            raise NotFound("no suspects left: a reviewer has settled everyone ranked since their labels last "
                           "changed (--include-reviewed lists them again)")
        if shown not in lists:
            raise NotFound(f"no person has {field} evidence to rank by")
        views = {name: build_queue(catalog, start=start, order=queue, ranked=rows) for name, rows in lists.items()}
        print_left_out(left_out)
    elif field or include_reviewed:
        raise InvalidInput(f"{'--field' if field else '--include-reviewed'} goes with --queue suspects")
    else:
        shown = queue
        views = {shown: build_queue(catalog, start=start, count=count, order=queue)}
    q = views[shown]  # the list the page opens on (and the terminal flow, --assign and --status use)
    if assign:
        added = sharing.assign(catalog, q, assign.split(","))
        console.print("assigned: " + ", ".join(f"{who} +{n:,}" for who, n in added.items()), highlight=False)
        _print_status(sharing.status(catalog, q))
        return
    if show_status:
        _print_status(sharing.status(catalog, q))
        return
    if not everyone and sharing.has_assignments(catalog):
        mine = set(sharing.share_of(catalog, reviewer))
        if not mine:
            raise NotFound(f"no people are assigned to {reviewer!r} (maskkit audit --assign ..., or --all)")
        views = {name: view.only(mine) for name, view in views.items()}  # the suspects' hints stay with them
        q = views[shown]
        views = {name: view for name, view in views.items() if view.profile_ids or name == shown}
        if not q.profile_ids:
            raise InvalidInput(f"none of {reviewer!r}'s assigned people are in this range (or use --all)")
    if no_web:
        _terminal_flow(catalog, q, reviewer, sheet_dir)
        return
    from ..review.queue import progress
    from ..review.server import AuditApp, exposure_note, make_server

    review = AuditApp(catalog, q, reviewer, views=views)
    server = make_server(review, host, port)
    p = progress(catalog, q)
    console.print(f"[bold]review page:[/] {review.url(host)}  "
                  f"({len(q)} people, {p['reviewed']} reviewed; reviewer {reviewer})", highlight=False, soft_wrap=True)
    if len(views) > 1:
        console.print(f"lists on the page: {', '.join(f'{name} ({len(view)})' for name, view in views.items())}; "
                      f"this one: {review.view}", highlight=False)
    note = exposure_note(host)
    if note:
        console.print(f"[yellow]{note}[/]", highlight=False)
    console.print(f"from another machine: ssh -L {port}:127.0.0.1:{port} THIS_SERVER, then open the URL (its token "
                  "lets only you drive this page). Ctrl-C stops.", highlight=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.print("stopped; everything was saved as you went")
    finally:
        server.server_close()


def _terminal_flow(catalog, q, reviewer: str, sheet_dir: Path) -> None:
    from ..review.actions import act, person_view
    from ..review.queue import progress, resume_index
    from ..review.sheet import contact_sheet

    index = resume_index(catalog, q, reviewer)
    console.print(TERMINAL_HELP)
    while 0 <= index < len(q):
        view = person_view(catalog, q.profile_ids[index], reviewer)
        sheet = contact_sheet(view, sheet_dir / f"{view['folder']}.png")
        p = progress(catalog, q)
        console.print(f"\n[bold]{index + 1}/{len(q)}[/] {view['folder']}: gender [bold]{view['gender']}[/], "
                      f"age [bold]{view['age']}[/] ({view['age_band']} {view['age_band_range']}); "
                      f"reviewed {p['reviewed']}/{p['total']}", highlight=False)
        console.print("  " + "  ".join(f"{n + 1}:{im['kind']}={im['mask']}" for n, im in enumerate(view["images"])),
                      highlight=False)
        hint = q.hints.get(view["profile_id"])
        if hint:  # the suspects queue: why this person is here, as the web page says it
            why = hint.get("evidence") or f"label probability {hint['label_probability']}"
            console.print(f"  suspect: {hint['source']} says {hint['says']}; {hint['field']}: {why}", highlight=False)
        console.print(f"  sheet: {sheet}", highlight=False)
        try:
            line = typer.prompt("verdict", default="a", show_default=True)
        except (EOFError, typer.Abort):
            break
        words = shlex.split(line) or ["a"]
        cmd, args = words[0].lower(), words[1:]
        try:
            if cmd in ("q", "quit"):
                break
            if cmd in ("b", "back"):
                index = max(0, index - 1)
                continue
            if cmd in ("a", "accept", "s", "skip", "bad"):
                act(catalog, view["profile_id"], reviewer, {"a": "accept", "s": "skip"}.get(cmd, cmd))
                index += 1
            elif cmd in ("g", "gender"):
                act(catalog, view["profile_id"], reviewer, "gender", value=args[0] if args else "flip")
            elif cmd == "age":
                act(catalog, view["profile_id"], reviewer, "age", value=_arg(args, "age N"))
            elif cmd == "band":
                act(catalog, view["profile_id"], reviewer, "age_band", value=_arg(args, "band young|middle|old"))
            elif cmd == "mask":
                if len(args) != 2 or not args[0].isdigit() or not 1 <= int(args[0]) <= len(view["images"]):
                    raise InvalidInput("mask N STATE, with N the image number 1..7")
                act(catalog, view["profile_id"], reviewer, "mask", kind=view["images"][int(args[0]) - 1]["kind"],
                    value=args[1])
            elif cmd == "swap":
                act(catalog, view["profile_id"], reviewer, "swap", value="/".join(args) or "incorrect_mask/normal")
            elif cmd == "note":
                act(catalog, view["profile_id"], reviewer, "note", note=" ".join(args))
            else:
                raise InvalidInput(f"unknown command {cmd!r}: {TERMINAL_HELP}")
        except MaskkitError as exc:
            console.print(f"[red]{exc}[/]", highlight=False)
    p = progress(catalog, q)
    console.print(f"reviewed {p['reviewed']}/{p['total']} in this range; you: {p['reviewers'].get(reviewer, 0)}")


def _print_status(rows) -> None:
    from rich.table import Table

    table = Table(title="review status")
    for col in ("reviewer", "assigned", "reviewed", "left", "fixes made"):
        table.add_column(col, justify="right" if col != "reviewer" else "left")
    for r in rows:
        table.add_row(r["reviewer"], f"{r['assigned']:,}", f"{r['reviewed']:,}", f"{r['left']:,}", f"{r['fixes']:,}")
    console.print(table)


def _arg(args: list[str], usage: str) -> str:
    if len(args) != 1:
        raise InvalidInput(f"usage: {usage}")
    return args[0]
