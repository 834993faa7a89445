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
