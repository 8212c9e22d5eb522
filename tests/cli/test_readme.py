"""The README's commands as written: every `mingpt ...` line of its shell
blocks names a real command with options it accepts, and the quick start
runs (with fewer iterations)."""
import re
import shlex
from pathlib import Path

import click
import pytest

from conftest import ROOT, invoke

README = (ROOT / "README.md").read_text()


def readme_commands() -> list[list[str]]:
    """The argument lists of the README's `mingpt` commands (comments and
    line continuations resolved, pipelines split)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("|"):
                words = shlex.split(part, comments=True)
                if words and words[0] == "mingpt":
                    out.append(words[1:])
    return out


@pytest.mark.parametrize("args", readme_commands(), ids=lambda a: " ".join(a[:2]))
def test_readme_command_parses(args):
    from mingpt_c.cli import main

    # under its groups' contexts, as the command line parses it: a command's
    # context made alone would take (and click keep) help options of its own
    ctx, cmd, rest = None, main, list(args)
    while isinstance(cmd, click.Group) and rest and rest[0] in cmd.commands:
        ctx = click.Context(cmd, info_name=cmd.name, parent=ctx, **cmd.context_settings)
        cmd = cmd.commands[rest.pop(0)]
    assert not isinstance(cmd, click.Group), f"no command in {args}"
    cmd.make_context(cmd.name, rest, parent=ctx)   # raises on an unknown option or a bad value


def test_quick_start_runs(tmp_path, monkeypatch):
    assert "mingpt train --out demo\n" in README and "mingpt sample demo --max-new-tokens 300" in README
    monkeypatch.chdir(tmp_path)
    res = invoke("train", "--out", "demo", "--max-iters", "20", "--eval-interval", "10", "--eval-iters", "2",
                 "--no-progress")
    assert res.exit_code == 0, res.stderr
    assert "val loss" in res.output and Path("demo/best/model.safetensors").exists()
    res = invoke("sample", "demo", "--max-new-tokens", "30")
    assert res.exit_code == 0 and len(res.output) >= 30
