"""Every command has help text and is documented in the README."""

from pathlib import Path

from typer.main import get_command

from maskkit.cli import app

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def commands(group, prefix=()):
    for name, cmd in group.commands.items():
        yield prefix + (name,), cmd
        if hasattr(cmd, "commands"):  # a group of subcommands
            yield from commands(cmd, prefix + (name,))


def test_every_command_has_help_and_is_in_the_readme():
    missing_help, undocumented = [], []
    assert len(list(commands(get_command(app)))) > 20
    for path, cmd in commands(get_command(app)):
        if not (cmd.help or "").strip():
            missing_help.append(" ".join(path))
        if f"maskkit {' '.join(path)}" not in README and not hasattr(cmd, "commands"):
            undocumented.append(" ".join(path))
        for param in cmd.params:
            if param.param_type_name == "option" and not (param.help or "").strip() and param.name != "help":
                missing_help.append(f"{' '.join(path)} --{param.name}")
    assert missing_help == [], f"no help text: {missing_help}"
    assert undocumented == [], f"not in README: {undocumented}"


def test_cli_modules_only_parse_call_and_print():
    """No SQL, sessions or private library names in maskkit/cli: each command calls a library function."""
    import re

    root = Path(__file__).resolve().parents[1] / "maskkit" / "cli"
    bad = re.compile(r"\bsqlalchemy\b|\bsqlmodel\b|\.session\(|\bselect\(|\.begin\(|\blib\._[a-z]|"
                     r"from \.\.[a-z_.]+ import (\w+, )*_[a-z]")
    found = [f"{p.name}:{n}: {line.strip()}" for p in sorted(root.glob("*.py"))
             for n, line in enumerate(p.read_text().splitlines(), 1) if bad.search(line.split("#")[0])]
    assert found == [], "\n".join(found)


def test_files_are_written_through_one_io_module():
    """The temporary-name-then-rename pattern lives in maskkit/files.py only."""
    import re

    root = Path(__file__).resolve().parents[1] / "maskkit"
    pattern = re.compile(r"\.tmp\b|tmp\.replace\(|os\.replace\(")
    found = [f"{p.relative_to(root)}:{n}" for p in sorted(root.rglob("*.py")) if p.name != "files.py"
             for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line.split("#")[0])]
    assert found == [], found
