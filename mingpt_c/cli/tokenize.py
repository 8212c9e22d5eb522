"""`mingpt tokenize`: byte-level BPE: train a vocabulary, encode, decode, show."""
from __future__ import annotations

import sys
import time

import click

from mingpt_c.cli import options


def _read_text_arg(text: str | None) -> str:
    if text is not None:
        return text
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise click.ClickException(f"standard input is not UTF-8 (invalid byte at offset {e.start})")


def _special_kwargs(allow_special: tuple[str, ...], special_as_text: bool) -> dict:
    allowed = "all" if "all" in allow_special else set(allow_special)
    return {"allowed_special": allowed, "disallowed_special": () if special_as_text else "all"}


_TOKENIZER_HELP = "gpt2, byte, or a tokenizer file (from `mingpt tokenize train`)"


@click.group()
def tokenize() -> None:
    """Byte-level BPE: train a vocabulary, encode, decode, inspect."""


@tokenize.command("train")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--vocab-size", type=options.POSITIVE_INT, required=True,
              help="256 bytes + merges + special tokens")
@click.option("--out", "out", type=options.Writable(dir_okay=False), required=True,
              help="tokenizer file to write (JSON, mingpt-bpe v1)")
@click.option("--pattern", type=click.Choice(["gpt2", "gpt4", "none"]), default="gpt2",
              help="pre-split regex: GPT-2's, GPT-4's (cl100k), or none (lines)")
@click.option("--special", "specials", multiple=True, metavar="TOKEN",
              help="special token, e.g. '<|endoftext|>' (repeatable); ids follow the merges")
@click.option("--min-frequency", type=options.NON_NEGATIVE_INT, default=2,
              help="stop when the best pair occurs fewer times than this")
@click.option("--phrases-after", type=options.NON_NEGATIVE_INT, default=None, metavar="N",
              help="two stages: the first N merges on the pattern's split, the rest across words "
                   "(phrase tokens); the tokenizer then splits lines only")
def tokenize_train(files, vocab_size, out, pattern, specials, min_frequency, phrases_after):
    """Learn a BPE vocabulary from text FILES (UTF-8)."""
    from mingpt_c.tokenizers import bpe_train

    t0 = time.perf_counter()
    tok = bpe_train.train_files(files, vocab_size, pattern=pattern, special_tokens=specials,
                                min_frequency=min_frequency, phrases_after=phrases_after)
    seconds = time.perf_counter() - t0
    tok.save(out)
    st = tok.train_stats
    click.echo(f"learned {st['merges']} merges from {st['bytes'] / 1e6:.2f} MB "
               f"({st['distinct_chunks']} distinct chunks) in {seconds:.2f} s; "
               f"vocab size {tok.vocab_size} -> {out}")
    if st["merges"] < st["requested_merges"]:
        click.echo(f"note: asked for {st['requested_merges']} merges, but no further pair occurs "
                   f"at least {min_frequency} times; the vocabulary is smaller", err=True)


@tokenize.command("encode")
@click.argument("text", required=False)
@click.option("--tokenizer", "spec", required=True, help=_TOKENIZER_HELP)
@click.option("-o", "--out", "out", type=options.Writable(dir_okay=False),
              help="write a token file (memory-mappable) instead of printing ids")
@click.option("--allow-special", multiple=True, metavar="TOKEN",
              help="encode this special token as its id (repeatable; 'all' for every one)")
@click.option("--special-as-text", is_flag=True,
              help="encode other special-token strings as ordinary text instead of failing")
def tokenize_encode(text, spec, out, allow_special, special_as_text):
    """Encode TEXT (or standard input) to token ids."""
    from mingpt_c.tokenizers.tokenizer import get_tokenizer

    tok = get_tokenizer(spec)
    ids = tok.encode_array(_read_text_arg(text), **_special_kwargs(allow_special, special_as_text))
    if out:
        from mingpt_c.tokenizers.tokenfile import write_tokens

        n = write_tokens(out, ids, vocab_size=tok.vocab_size)
        click.echo(f"wrote {n} tokens to {out}", err=True)
    else:
        click.echo(" ".join(map(str, ids.tolist())))


@tokenize.command("decode")
@click.argument("ids", nargs=-1, type=int)
@click.option("--tokenizer", "spec", required=True, help=_TOKENIZER_HELP)
@click.option("-i", "--input", "token_file", type=click.Path(dir_okay=False),
              help="read the ids from a token file instead")
def tokenize_decode(ids, spec, token_file):
    """Decode IDS (or whitespace-separated ids on standard input) to text."""
    from mingpt_c.tokenizers.tokenizer import get_tokenizer

    tok = get_tokenizer(spec)
    if token_file:
        from mingpt_c.tokenizers.tokenfile import read_tokens

        ids = read_tokens(token_file).tolist()
    elif not ids:
        words = sys.stdin.read().split()
        try:
            ids = [int(w) for w in words]
        except ValueError:
            bad = next(w for w in words if not w.lstrip("-").isdigit())
            raise click.ClickException(f"{bad!r} on standard input is not a token id") from None
    click.echo(tok.decode(ids), nl=False)


@tokenize.command("show")
@click.argument("text", required=False)
@click.option("--tokenizer", "spec", required=True, help=_TOKENIZER_HELP)
@click.option("--dump", is_flag=True, help="print the whole vocabulary: id, token, merge")
@click.option("--allow-special", multiple=True, metavar="TOKEN",
              help="treat this special token as special (repeatable; 'all')")
@click.option("--special-as-text", is_flag=True,
              help="encode other special-token strings as ordinary text")
def tokenize_show(text, spec, dump, allow_special, special_as_text):
    """Show how TEXT splits into tokens: one 'id<TAB>piece' line per token."""
    from mingpt_c.tokenizers.tokenizer import BPETokenizer, get_tokenizer, printable

    tok = get_tokenizer(spec)
    if dump:
        if not isinstance(tok, BPETokenizer):
            raise click.ClickException(f"--dump is for BPE tokenizers; {spec} is {tok.kind}")
        for line in tok.dump():
            click.echo(line)
        return
    if text is None:
        text = _read_text_arg(None)
    for i, piece in tok.pieces(text, **_special_kwargs(allow_special, special_as_text)):
        click.echo(f"{i}\t{printable(piece)}")
