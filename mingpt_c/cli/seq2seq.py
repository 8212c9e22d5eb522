"""`mingpt seq2seq`: the encoder-decoder Transformer: train, translate,
eval, attention (alignment maps)."""
from __future__ import annotations

import json
import sys

import click

from mingpt_c.cli import options


def _say(m: str) -> None:
    click.echo(m, err=True)


def _decode_options(f):
    from mingpt_c.seq2seq.decode import DecodeConfig

    d = DecodeConfig()
    return options.decorate(f, [
        click.option("--beam", type=options.POSITIVE_INT, default=d.beam, help="beam size (1: greedy)"),
        click.option("--length-penalty", type=options.NON_NEGATIVE, default=d.length_penalty,
                     help="alpha of the beam search's length normalisation (0: none)"),
        click.option("--norm", type=click.Choice(["gnmt", "hf"]), default=d.norm,
                     help="length normalisation: gnmt, score / ((5 + len) / 6)^alpha (Wu et al. 2016), "
                          "or hf, score / len^alpha (Hugging Face generate)"),
        click.option("--search", type=click.Choice(["exact", "hf"]), default=d.search,
                     help="beam search's rules: exact (stops only when no open hypothesis can win) or hf "
                          "(transformers' generate: reproduces an imported Marian model's outputs; use with "
                          "--norm hf)"),
        click.option("--len-a", type=options.NON_NEGATIVE, default=d.len_a,
                     help="longest output: len-a x source tokens + len-b (and the model's maximum)"),
        click.option("--len-b", type=options.NON_NEGATIVE_INT, default=d.len_b, help="see --len-a"),
        click.option("--batch-size", type=options.POSITIVE_INT, default=d.batch_size,
                     help="sources decoded together"),
        options.threads(),
    ])


def _decode_config(opts: dict):
    from mingpt_c.seq2seq.decode import DecodeConfig

    options.use_threads(opts.pop("threads"))
    return DecodeConfig(**{k: opts.pop(k) for k in ("beam", "length_penalty", "norm", "search", "len_a", "len_b",
                                                    "batch_size", "rerank_weight") if k in opts})


def _model_options(f):
    from mingpt_c.seq2seq.decode import DecodeConfig

    return options.decorate(f, [
        click.option("--ensemble", "ensemble", multiple=True, type=click.Path(), metavar="CKPT",
                     help="decode together with this checkpoint too (repeatable): each step takes the mean of "
                          "the models' log-probabilities; the vocabularies must be the same"),
        click.option("--rerank", "rerank", multiple=True, type=click.Path(), metavar="CKPT",
                     help="choose with this checkpoint too (repeatable; typically a right-to-left model, train "
                          "--reverse-target): the beam's best outputs of both, each scored by both; needs "
                          "--beam 2 or more"),
        click.option("--rerank-weight", type=options.SHARE, default=DecodeConfig().rerank_weight,
                     help="the --rerank models' share of an output's score (0 to 1)"),
    ])


@click.group()
def seq2seq() -> None:
    """The encoder-decoder Transformer: translation-style tasks (default: English grapheme-to-phoneme)."""


def _train_options(f):
    from mingpt_c.seq2seq.train import BEST_BY, Seq2SeqTrainConfig

    d = Seq2SeqTrainConfig()
    kinds = click.Choice(["char", "symbols", "bpe"])
    return options.decorate(f, [
        click.option("--train", "train_file", type=click.Path(dir_okay=False), default=None,
                     help="pairs: TSV (source<TAB>target per line) or JSON Lines ({\"source\": ..., \"target\": "
                          "...}) [default: English grapheme-to-phoneme on the CMU Pronouncing Dictionary]"),
        click.option("--val", "val_file", type=click.Path(dir_okay=False), default=None,
                     help="validation pairs, same format [default with no --train: the CMUdict validation words]"),
        options.out(),
        options.init_from("start from a seq2seq checkpoint (its weights and vocabularies)"),
        click.option("--distill-from", "distill_from", multiple=True, type=click.Path(), metavar="CKPT",
                     help="distil this trained checkpoint (repeatable: an ensemble) into the model trained "
                          "here (see --distill)"),
        click.option("--distill", type=click.Choice(["sequence", "token"]), default=d.distill,
                     help="with --distill-from: sequence trains on the teachers' outputs; token keeps the "
                          "references and mixes the teachers' next-token distributions into each target "
                          "(the student takes their vocabularies; kept in --out/distilled.npz; the CPU)"),
        click.option("--distill-beam", type=options.POSITIVE_INT, default=d.distill_beam,
                     help="--distill sequence: the teachers' beam size (1: greedy)"),
        click.option("--distill-weight", type=options.SHARE, default=d.distill_weight,
                     help="--distill token: the teachers' share of each target token's distribution"),
        click.option("--src-vocab", type=kinds, default=d.src_vocab,
                     help="source tokens: characters, whitespace-separated symbols, or a BPE trained here"),
        click.option("--tgt-vocab", type=kinds, default=None,
                     help="target tokens [default: symbols (phonemes) for the G2P default, else char]"),
        click.option("--shared-vocab", is_flag=True,
                     help="one vocabulary and one embedding for source, target and output (the paper's tying)"),
        click.option("--reverse-target", is_flag=True,
                     help="learn the targets last token first: a right-to-left model, whose outputs come out "
                          "in reading order, to re-score a left-to-right model's (translate/eval --rerank)"),
        click.option("--vocab-size", type=options.Int("[260, inf)"), default=d.vocab_size,
                     help="a trained BPE's size, specials included"),
        click.option("--max-len", type=options.POSITIVE_INT, default=d.max_len,
                     help="longest source or target in tokens; longer training pairs are left out (with a note)"),
        click.option("--enc-layers", type=options.POSITIVE_INT, default=d.enc_layers, help="encoder layers"),
        click.option("--dec-layers", type=options.POSITIVE_INT, default=d.dec_layers, help="decoder layers"),
        click.option("--n-head", type=options.POSITIVE_INT, default=d.n_head, help="attention heads per layer"),
        click.option("--n-embd", type=options.POSITIVE_INT, default=d.n_embd,
                     help="d_model: channels of every token's vector (a multiple of --n-head; the "
                          "feed-forward is 4x wider)"),
        options.dropout(d),
        click.option("--act", type=click.Choice(["relu", "gelu", "gelu_tanh"]), default=d.act,
                     help="feed-forward activation (relu: the paper's)"),
        click.option("--pre-ln", is_flag=True, help="pre-layernorm sublayers instead of the paper's post-LN"),
        click.option("--positions", type=click.Choice(["sinusoidal", "learned"]), default=d.positions,
                     help="position encodings (sinusoidal: the paper's)"),
        click.option("--init", type=click.Choice(["xavier", "gpt2"]), default=d.init,
                     help="a fresh model's matrices: Xavier-uniform (the paper's) or N(0, 0.02) (GPT-2's)"),
        click.option("--label-smoothing", type=options.FRACTION, default=d.label_smoothing,
                     help="share of each target token's probability spread over the vocabulary"),
        click.option("--best-by", type=click.Choice(list(BEST_BY)), default=d.best_by,
                     help="what best/ keeps: the lowest validation loss, the lowest word or phoneme error rate "
                          "(symbol targets), or the highest BLEU or chrF of each epoch's greedy decoding of the "
                          "--eval-limit validation sources"),
        options.batch_size(d),
        options.grad_accum(d),
        click.option("--epochs", type=options.POSITIVE, default=d.epochs,
                     help="passes over the training pairs (may be fractional)"),
        click.option("--max-iters", type=options.POSITIVE_INT, default=None, help="iterations (overrides --epochs)"),
        click.option("--schedule", type=click.Choice(["cosine", "inverse-sqrt"]), default=d.schedule,
                     help="learning rate after the warmup: cosine decay to --min-lr, or the paper's "
                          "inverse square root"),
        *options.optim(d, betas=("beta2",)),
        click.option("--adam-eps", type=options.POSITIVE, default=d.adam_eps, help="Adam's epsilon (the paper: 1e-9)"),
        click.option("--limit", type=options.POSITIVE_INT, default=None, help="use only the first N training pairs"),
        click.option("--eval-limit", type=options.NON_NEGATIVE_INT, default=d.eval_limit or 0,
                     help="validate on the first N validation sources each epoch: the loss, and their greedy "
                          "decoding for the error rates / BLEU (0: all)"),
        options.log_interval(d),
        options.seed(d),
        options.train_threads(),
        options.no_progress(),
        options.resume("continue the run in --out from its latest checkpoint"),
        *options.run_options(d),
    ])


@seq2seq.command("train")
@_train_options
@click.pass_context
def seq2seq_train(ctx, **opts):
    """Train an encoder-decoder on pairs (default: CMUdict grapheme-to-phoneme, offline)."""
    from mingpt_c.seq2seq.train import Seq2SeqTrainConfig, best_shown, train

    options.check_lr(opts)
    progress = not opts.pop("no_progress")
    resume = opts.pop("resume")
    opts["eval_limit"] = opts["eval_limit"] or None
    tc = Seq2SeqTrainConfig(**opts, progress=progress)
    res = train(tc, resume, log=_say, given=options.given(ctx))
    options.exit_if_interrupted(res)
    if not res["main"]:
        return
    data = f" {tc.val_file}" if tc.val_file else (" cmudict:test" if not tc.train_file else " DATA")
    best = best_shown(res)
    click.echo(f"done: {res['iter']} iterations in {res['seconds']:.0f} s" + (f", {best}" if best else "")
               + f"; {options.saved(tc.out)}; evaluate with: mingpt seq2seq eval {tc.out}{data}")


@seq2seq.command("translate")
@click.argument("ckpt", type=click.Path())
@click.argument("texts", nargs=-1)
@_decode_options
@_model_options
def seq2seq_translate(ckpt, texts, ensemble, rerank, **opts):
    """Translate TEXTS (none: one source per line on stdin, one output per line on stdout)."""
    from mingpt_c.seq2seq.train import translate

    dc = _decode_config(opts)
    if not texts:
        texts = [line.rstrip("\n") for line in sys.stdin]
        if not texts:
            raise click.UsageError("nothing to translate: give TEXTS or lines on stdin")
    for out in translate(ckpt, list(texts), dc, say=_say, ensemble=ensemble, rerank=rerank):
        click.echo(out)


@seq2seq.command("eval")
@click.argument("ckpt", type=click.Path())
@click.argument("data")
@_decode_options
@_model_options
@click.option("--limit", type=options.POSITIVE_INT, default=None, help="evaluate on the first N sources")
@click.option("--json", "as_json", is_flag=True, help="print the metrics as JSON")
def seq2seq_eval(ckpt, data, ensemble, rerank, limit, as_json, **opts):
    """BLEU and chrF (sacrebleu) of the outputs for DATA's sources against all their targets; for symbol
    outputs also word error rate, phoneme/token error rate and exact match. DATA: a TSV or JSON Lines
    file, or cmudict:test / cmudict:val (the G2P default's held-out words)."""
    from mingpt_c.seq2seq.train import evaluate_file

    dc = _decode_config(opts)
    r = evaluate_file(ckpt, data, dc, limit, say=_say, ensemble=ensemble, rerank=rerank)
    if as_json:
        click.echo(json.dumps(r, indent=1))
        return
    click.echo(f"{r['n']:,} sources: BLEU {r['bleu']:.2f}, chrF {r['chrf']:.2f}")
    if "wer" in r:
        click.echo(f"word error rate {r['wer']:.2%}, token error rate {r['per']:.2%}, exact match {r['exact']:.2%}")


@seq2seq.command("attention")
@click.argument("ckpt", type=click.Path())
@click.argument("text")
@click.option("--out", required=True, type=options.ImageFile(), help="image to write (PNG, SVG, PDF...)")
@click.option("--layer", type=options.POSITIVE_INT, default=None, help="decoder layer, from 1 [default: the last]")
@click.option("--head", type=options.POSITIVE_INT, default=None, help="one head, from 1 [default: their mean]")
@_decode_options
def seq2seq_attention(ckpt, text, out, layer, head, **opts):
    """Draw the decoder's cross-attention for TEXT as a source x output alignment map."""
    from mingpt_c.seq2seq.attention import draw, translate_with_alignment
    from mingpt_c.seq2seq.train import encode_sources, load_model

    dc = _decode_config(opts)
    model, vocabs = load_model(ckpt)
    src = encode_sources(model, vocabs, [text], say=_say)[0]
    output, A, src_labels, out_labels = translate_with_alignment(
        model, vocabs, src, dc, None if layer is None else layer - 1, None if head is None else head - 1)
    which = (f"layer {layer or model.cfg.dec_layers}" + (f", head {head}" if head else ", mean of the heads"))
    draw(A, src_labels, out_labels, out, title=f"{text} -> {output}\n(cross-attention, {which})")
    click.echo(output)
    _say(f"wrote {out}")


def describe(loaded: dict, path) -> list[tuple[str, str]]:
    """`mingpt info`: the rows that describe an encoder-decoder checkpoint."""
    from mingpt_c.seq2seq.train import best_shown

    cfg, v = loaded["cfg"], loaded["vocabs"]
    rows = [("model", f"encoder-decoder, {cfg.enc_layers}+{cfg.dec_layers} layers, {cfg.n_head} heads, width "
                      f"{cfg.n_embd}, {'pre' if cfg.pre_ln else 'post'}-LN, {cfg.act}, {cfg.positions} positions, "
                      f"max {cfg.max_src_len} source / {cfg.max_tgt_len} target tokens"
                      + (", writes right to left" if cfg.reverse_target else "")),
            ("parameters", f"{loaded['params'].size:,}"),
            ("vocabulary", f"{v['src'].kind} {v['src'].size} -> {v['tgt'].kind} {v['tgt'].size}"
                           + (" (shared)" if cfg.shared_vocab else "")),
            ("data", str(cfg.extra.get("data", "?")))]
    st = loaded.get("train_state")
    if st:
        best = best_shown(st)
        rows.append(("trained", f"{st.get('iter')} iterations" + (f", {best}" if best else "")))
    return rows
