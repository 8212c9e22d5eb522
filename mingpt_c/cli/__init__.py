"""The `mingpt` command line: parse, validate, call mingpt_c, print.

One module per command group (gpt: train, sample, eval, attention; tokenize; encoder;
vit; seq2seq; tools: env, info, import, export, bench), options shared by several
commands in options.py. Errors from the package (MinGPTError) become one line
on stderr and exit code 1; nothing here computes anything itself.

Only click and the option declarations load at start: each command imports
what it runs inside its function, so `mingpt --help` stays fast.
"""
from __future__ import annotations

import sys

import click

from mingpt_c.errors import MinGPTError


class Group(click.Group):
    """Turns MinGPTError (and Ctrl-C outside training) into one clear line,
    and so a bad option value (click.BadParameter, which click shows with
    the usage and a hint): "Error: Invalid value for '--lr': -1 is not in
    the range (0, inf)", still exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.BadParameter as e:
            raise click.UsageError(e.format_message()) from None   # no ctx: no usage lines
        except MinGPTError as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="mingpt-c", message="mingpt-c %(version)s")
def main():
    """mingpt-c: train and run small transformers on a fast C core."""


# ------------------------------------------------------------------ the commands
# Each module declares its commands; they join the group here (--help lists
# them sorted by name, so the order below is only for reading).

from mingpt_c.cli import encoder, gpt, seq2seq, tokenize, tools, vit  # noqa: E402

for _command in (tools.env, tools.info, tokenize.tokenize, gpt.train, gpt.sample, gpt.eval_cmd, gpt.attention,
                 encoder.encoder, tools.import_cmd, tools.export_cmd, tools.bench, vit.vit, seq2seq.seq2seq):
    main.add_command(_command)
