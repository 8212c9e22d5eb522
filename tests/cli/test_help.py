"""Every command's --help, against the snapshot in tests/golden/help.txt: a
refactor must not change what users see, and an intended change (a new
option) shows up in the snapshot's diff. `python tests/cli/test_help.py`
records a new snapshot."""
import sys
from pathlib import Path

import click
from click.testing import CliRunner

HERE = Path(__file__).resolve().parent.parent   # tests/
SNAPSHOT = HERE / "golden" / "help.txt"
sys.path.insert(0, str(HERE.parent))


def help_texts() -> str:
    from cli import main

    out = []

    def walk(cmd, path):
        res = CliRunner().invoke(main, [*path, "--help"], env={"COLUMNS": "100"})
        assert res.exit_code == 0, res.output
        out.append(f"==== mingpt {' '.join(path)}\n{res.output}")
        if isinstance(cmd, click.Group):
            for name in sorted(cmd.commands):
                walk(cmd.commands[name], [*path, name])

    walk(main, [])
    return "".join(out)


def test_help_unchanged():
    assert help_texts() == SNAPSHOT.read_text(), \
        "a --help text changed: if intended, record it with `python tests/cli/test_help.py`"


if __name__ == "__main__":
    SNAPSHOT.write_text(help_texts())
    print(f"recorded {SNAPSHOT}")


def test_every_option_has_a_help_text():
    from cli import main

    missing = []

    def walk(cmd, path):
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])
            return
        missing.extend(f"mingpt {' '.join(path)} {p.opts[0]}" for p in cmd.params
                       if isinstance(p, click.Option) and not p.help)

    walk(main, [])
    assert not missing, missing
