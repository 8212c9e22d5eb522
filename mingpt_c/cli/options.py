"""Options that several commands share, declared once, and the helpers that
read them (threads, device, run directory and resume).

A command lists its options in the order its --help shows them; the shared
ones come from here, the family's own are written in its module. Training
options take their defaults from the family's config (`d`), so a default is
written once, in the config's dataclass.

Every numeric option has a range type (Int, Float: finite, in an interval
with open or closed ends), so a bad value is refused while click parses, as
one line naming the option and the range (cli.Group makes click's usage
error one line), before any file is read or written. Rules between options
(--min-lr at most --lr) are checked first thing in the command.
"""
from __future__ import annotations

import math
import os
import sys

import click

# ------------------------------------------------------------------ value types


class _Interval(click.ParamType):
    """A number in an interval written as in maths: "[0, 1)", "(0, inf)".
    The help keeps click's metavar (INTEGER, FLOAT) and shows no range, so
    the --help texts read as before; the error shows the range."""

    base: click.ParamType

    def __init__(self, interval: str):
        lo, hi = interval[1:-1].split(",")
        self.interval = interval
        self.lo, self.hi = float(lo), float(hi)
        self.lo_open, self.hi_open = interval[0] == "(", interval[-1] == ")"

    def contains(self, v) -> bool:
        # nan compares false everywhere, so it is in no interval
        above = v > self.lo or (not self.lo_open and v == self.lo)
        below = v < self.hi or (not self.hi_open and v == self.hi)
        return above and below

    def convert(self, value, param, ctx):
        v = self.base.convert(value, param, ctx)
        if not self.contains(v):
            typed = value.strip() if isinstance(value, str) else repr(value)
            what = "is not in" if math.isfinite(v) else "is not a finite number in"
            self.fail(f"{typed} {what} the range {self.interval}", param, ctx)
        return v

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.interval!r})"


class Int(_Interval):
    name, base = "integer", click.INT


class Float(_Interval):
    """Finite (inf and nan are never in the ranges used: ends at inf are open)."""
    name, base = "float", click.FLOAT


POSITIVE_INT = Int("[1, inf)")         # sizes, counts, intervals
NON_NEGATIVE_INT = Int("[0, inf)")     # 0 meaning off, none or all
SEED = NON_NEGATIVE_INT                # numpy refuses negative seeds
POSITIVE = Float("(0, inf)")           # learning rate, a spread, seconds
NON_NEGATIVE = Float("[0, inf)")       # 0 meaning off
FRACTION = Float("[0, 1)")             # dropout-like shares (1 would drop everything)
OPEN_FRACTION = Float("(0, 1)")        # a held-out share: both sides non-empty
SHARE = Float("[0, 1]")                # a mixing weight: either end allowed
BETA = Float("[0, 1)")                 # Adam's moment decays


def _unwritable(path) -> str | None:
    """Why nothing can be written at path (None: it can). Probed by creating
    and removing a file in the nearest folder that exists, so a read-only
    file system or a missing permission shows before any work, and nothing
    is left behind."""
    import tempfile
    from pathlib import Path

    p = Path(path).absolute()
    if p.exists() and p.is_dir() and not p.is_symlink():
        base = p
    else:
        base = p.parent
        while not base.exists():
            base = base.parent
    if not base.is_dir():
        return f"{base} is not a folder"
    try:
        fd, probe = tempfile.mkstemp(prefix=".mingpt-probe-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return f"cannot write in {base} ({e.strerror or e})"
    return None


class Writable(click.Path):
    """A file or folder this command will write: checked at parse time."""

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        why = _unwritable(value)
        if why:
            self.fail(f"{value}: {why}", param, ctx)
        return value


class ImageFile(Writable):
    """A file matplotlib can draw into: the extension picks the format, so
    it must be one that matplotlib writes (pgf is left out: it needs LaTeX)."""

    def __init__(self):
        super().__init__(dir_okay=False)

    def convert(self, value, param, ctx):
        from pathlib import PurePath

        from matplotlib.backend_bases import FigureCanvasBase

        ok = sorted(set(FigureCanvasBase.get_supported_filetypes()) - {"pgf"})
        ext = PurePath(str(value)).suffix.lower().lstrip(".")
        if ext not in ok:
            said = f"its extension .{ext} is not" if ext else "it has no extension, which is not"
            self.fail(f"{value}: {said} an image format matplotlib writes (use one of "
                      f"{', '.join('.' + e for e in ok)})", param, ctx)
        return super().convert(value, param, ctx)


class OptionConflict(click.ClickException):
    """Two options that contradict each other: one line naming both, exit
    code 2 like click's usage errors (a click.UsageError raised in a command
    would get the usage lines printed above it)."""
    exit_code = 2


def check_lr(opts: dict) -> None:
    """The schedule's rule between options: the cosine goes down from --lr
    to --min-lr, so --min-lr must not be above --lr."""
    if opts["min_lr"] > opts["lr"]:
        raise OptionConflict(f"--min-lr {opts['min_lr']:g} is above --lr {opts['lr']:g}: "
                               f"the learning rate decays from --lr down to --min-lr")



def decorate(f, opts: list):
    """Applies option decorators in the order listed (first one on top of --help)."""
    for o in reversed(opts):
        f = o(f)
    return f


# ------------------------------------------------------------------ threads, device


def threads(help: str | None = "C core threads [default: all cores]"):
    """--threads for the C core (none given: all cores)."""
    return click.option("--threads", type=POSITIVE_INT, default=None, help=help)


def train_threads():
    return threads("C core threads [default: all cores]")


def use_threads(n: int | None) -> None:
    """Sets the C core's thread count when --threads was given."""
    if n:
        from mingpt_c._lib import set_num_threads

        set_num_threads(n)


def device_options(with_dtype: bool = True):
    """--device (and --dtype): the options every command that runs a model shares."""
    opts = [click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu",
                         help="where the model runs (cuda: an NVIDIA GPU, `make cuda` build)")]
    if with_dtype:
        opts.append(click.option("--dtype", type=click.Choice(["fp32", "tf32", "bf16"]), default=None,
                                 help="precision of the GPU's matrix products "
                                      "[default: bf16 where the GPU has it, else fp32]"))
    return opts


def device_option(f):
    return decorate(f, device_options())


def to_device(name: str, dtype: str | None):
    """The Device for --device/--dtype (bf16 products by default on a GPU that has them)."""
    from mingpt_c.device import Device, default_dtype

    if name == "cuda" and dtype is None:
        Device("cuda")   # one clear line when there is no GPU
        dtype = default_dtype("cuda")
    return Device(name, dtype)


# ------------------------------------------------------------------ training options
# Shared by the training commands (gpt train, vit train, encoder pretrain/train).
# `help=` is there where a family's --help has always said something else
# (tests/golden/help.txt holds every text).


def out(default: str | None = None):
    """--out, the run directory; without a default, it is required."""
    where = {"default": default} if default is not None else {"required": True}
    return click.option("--out", **where, type=Writable(file_okay=False), help="run directory")


def preset(names: list[str]):
    return click.option("--preset", type=click.Choice(names), default=None,
                        help="model size preset (explicit size flags win)")


def model_size(d) -> list:
    """--n-layer, --n-head, --n-embd."""
    return [click.option("--n-layer", type=POSITIVE_INT, default=d.n_layer, help="transformer blocks"),
            click.option("--n-head", type=POSITIVE_INT, default=d.n_head, help="attention heads per block"),
            click.option("--n-embd", type=POSITIVE_INT, default=d.n_embd,
                         help="width: channels of every token's vector (a multiple of --n-head)")]


def dropout(d):
    return click.option("--dropout", type=FRACTION, default=d.dropout,
                        help="dropout probability on the embeddings and the residual branches")


def batch_size(d):
    return click.option("--batch-size", type=POSITIVE_INT, default=d.batch_size,
                        help="examples per micro-batch (per rank under MPI)")


def lr(d):
    return click.option("--lr", type=POSITIVE, default=d.lr, help="peak learning rate")


def min_lr(d, help: str | None = "learning rate at the end of the cosine"):
    return click.option("--min-lr", type=NON_NEGATIVE, default=d.min_lr, help=help)


def warmup_iters(d):
    return click.option("--warmup-iters", type=NON_NEGATIVE_INT, default=d.warmup_iters,
                        help="iterations of linear learning-rate warmup")


def weight_decay(d):
    return click.option("--weight-decay", type=NON_NEGATIVE, default=d.weight_decay,
                        help="AdamW's decoupled weight decay (matrices and embeddings only)")


def beta2(d):
    return click.option("--beta2", type=BETA, default=d.beta2, help="AdamW's second-moment decay")


def grad_clip(d, help: str | None = "max gradient norm (0: off)"):
    return click.option("--grad-clip", type=NON_NEGATIVE, default=d.grad_clip, help=help)


def ema(d):
    return click.option("--ema", type=FRACTION, default=d.ema,
                        help="evaluate and save an exponential moving average of the weights with this decay "
                             "(0.999: about the last 1,000 steps; 0: none)")


def grad_accum(d, help: str | None = "micro-batches per step"):
    return click.option("--grad-accum", type=POSITIVE_INT, default=d.grad_accum, help=help)


def log_interval(d):
    return click.option("--log-interval", type=POSITIVE_INT, default=d.log_interval,
                        help="iterations between train-loss lines in log.jsonl")


def seed(d):
    return click.option("--seed", type=SEED, default=d.seed,
                        help="seeds every random stream: initialisation, batches, masking, dropout")


def resume(help: str = "continue the run in --out from its latest checkpoint"):
    return click.option("--resume", is_flag=True, help=help)


def init_from(help: str):
    return click.option("--init-from", type=click.Path(), default=None, help=help)


def no_progress(help: str | None = "no progress bar"):
    return click.option("--no-progress", is_flag=True, help=help)


def max_nan_steps(d):
    return click.option("--max-nan-steps", type=POSITIVE_INT, default=d.max_nan_steps,
                        help="stop after this many non-finite steps in a row (each one is skipped)")


def dist_timeout(d):
    return click.option("--dist-timeout", type=POSITIVE, default=d.dist_timeout,
                        help="under MPI: seconds to wait for the other ranks before aborting")


def run_options(d) -> list:
    """What every training command ends with: the failure policy, MPI, the device."""
    return [max_nan_steps(d), dist_timeout(d), *device_options()]


# ------------------------------------------------------------------ run directory and config
# The run scaffold (mingpt_c.run.scaffold) locks --out, refuses a new run
# over an old one, and applies the --resume rule (the saved run_config.json
# wins; a given option that contradicts it is an error naming it): the
# commands hand it the options they were given.


def given(ctx: click.Context, rename: dict | None = None) -> dict:
    """{config field: the option as typed} for every parameter given on the
    command line (an argument by its metavar, FILES); rename maps a
    parameter's name to its config field."""
    out = {}
    for p in ctx.command.params:
        if ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE:
            flag = p.opts[0] if isinstance(p, click.Option) else p.human_readable_name
            out[(rename or {}).get(p.name, p.name)] = flag
    return out


def apply_preset(opts: dict, values: dict, given: dict, name: str) -> None:
    """A preset's values for the options not given on the command line
    (given: they count as given by --preset NAME)."""
    for k, v in values.items():
        if k not in given:
            opts[k] = v
            given[k] = f"--preset {name}"


def flags(values: dict) -> str:
    """Options as typed on a command line: {"patch_size": 7, "hflip": True} -> "--patch-size 7 --hflip"."""
    return " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v:g}" if isinstance(v, float) else f" {v}")
                    for k, v in values.items())


def apply_recipe(opts: dict, values: dict, given: dict, name: str) -> None:
    """A data set's published recipe for the options not given on the command
    line (they count as given by the recipe); opts["recipe"] says, for the
    run's first line, which flags it set (none left: no recipe)."""
    recipe = {k: v for k, v in values.items() if k not in given}
    if recipe:
        opts.update(recipe, recipe=f"{name} ({flags(recipe)}; a flag given on the command line wins)")
        given.update({k: f"the {name} recipe" for k in recipe})


def exit_if_interrupted(res: dict) -> None:
    """A training run that SIGINT or SIGTERM stopped (its latest/ saved)
    exits with 128 + the signal's number: 130, 143."""
    from mingpt_c.run.scaffold import exit_status

    status = exit_status(res)
    if status:
        sys.exit(status)


def saved(out) -> str:
    """Where a finished run's checkpoints are, as the last line says it: only
    those that exist (a run of 0 iterations, or one that stopped before its
    first save, has none)."""
    from pathlib import Path

    have = [f"{out}/{name}" for name in ("best", "latest") if (Path(out) / name / "config.json").exists()]
    if not have:
        return "no checkpoint was saved (no training step was taken)"
    return ("checkpoints in " if len(have) > 1 else "checkpoint in ") + " and ".join(have)


def optim(d, betas: tuple = ()) -> list:
    """The optimizer and schedule options (nn/optim.py's OptimConfig) in
    --help's order: --lr, --min-lr, --warmup-iters, --weight-decay, the
    betas a family exposes, --grad-clip, --ema."""
    beta = {"beta2": beta2}
    return [lr(d), min_lr(d), warmup_iters(d), weight_decay(d), *(beta[b](d) for b in betas), grad_clip(d), ema(d)]
