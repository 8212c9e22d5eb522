"""Encoder training: masked-LM pretraining on text, sequence classification
on JSON Lines, evaluation (accuracy, per-class precision/recall/F1,
confusion matrix) and prediction. The loop (_fit, shared by the two tasks)
runs on the run scaffold (mingpt_c.run.scaffold), which owns the run
directory, logging, signals, the non-finite policy, checkpoints, --resume
and MPI.

Run directory (--out), as GPT runs:
    run_config.json   every resolved option
    latest/ best/     encoder checkpoints (mingpt_c.encoder.checkpoint);
                      best/ is the best validation accuracy (pretraining,
                      or no --val: the model the run ends with)
    log.jsonl         train records every log interval, one eval per epoch
    loss.png          the training loss and the validation accuracy

A from-scratch run trains a byte-level BPE vocabulary (the project's C
trainer) on its training texts, with BERT's special tokens added. Batches
group texts of similar length (encoder/data.py, length_batches), so little
compute goes to padding. A step takes grad_accum global batches of
batch_size rows per rank; every rank pads the same global batch and takes
its rows, and each micro-batch counts by its items (rows; masked tokens in
pretraining), so 2 ranks of B rows train as 1 rank of 2B. Schedule: linear
warmup, cosine decay (optim.lr_at).
Random streams (mingpt_c.nn.seeds): the epoch order from STREAM_BATCHES at
(epoch), masking and token dropout from STREAM_MASKING and
STREAM_TOKEN_DROPOUT at the batch number, dropout masks from
dropout_seed(seed, iteration, micro-step, rank); a resumed run continues
exactly.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from mingpt_c.checkpoint import training_weights
from mingpt_c.device import CPU, Device
from mingpt_c.encoder import checkpoint as ckpt
from mingpt_c.encoder import data as ed
from mingpt_c.encoder.model import Encoder, EncoderConfig
from mingpt_c.errors import CheckpointError, DataError
from mingpt_c.nn.loss import mean_cross_entropy, softmax
from mingpt_c.nn.model import memory_bytes
from mingpt_c.nn.optim import AdamW, OptimConfig, lr_at
from mingpt_c.nn.params import Layout
from mingpt_c.nn.seeds import STREAM_BATCHES, STREAM_MASKING, STREAM_TOKEN_DROPOUT, dropout_seed, stream_rng
from mingpt_c.run.scaffold import Run


@dataclass
class EncoderTrainConfig(OptimConfig):
    out: str = "encoder-out"        # run directory
    train_file: str = ""            # JSON Lines (classification) or text/JSON Lines (pretraining)
    val_file: str | None = None     # JSON Lines for validation (classification)
    init_from: str | None = None    # start from this encoder checkpoint (ours or imported)
    tokenizer: str | None = None    # a BPE file with [PAD] [UNK] [CLS] [SEP] [MASK]; default: train one
    vocab_size: int = 8192          # BPE vocabulary to train (from scratch)
    lower: bool = True              # lower-case texts before BPE (from scratch)
    bpe_pattern: str = "gpt2"       # BPE pre-split: gpt2 (merges stay within words) | none (merges cross spaces)
                                    # | phrases (gpt2, then the last phrase_share of the merges across words)
    phrase_share: float = 0.25
    max_len: int = 256              # tokens per text, [CLS] and [SEP] included; longer texts are cut
    truncate: str = "head"          # what a cut text keeps: head | head_tail
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.1
    token_dropout: float = 0.0      # classification: share of tokens hidden from each training example
    act: str = "gelu"
    pre_ln: bool = False
    pooling: str = "mean"           # cls | mean | max
    bigram_buckets: int = 0         # hashed token-bigram embedding rows (0: none)
    recipe: str | None = None       # the data set's recipe the command line started from (for the log)
    batch_size: int = 32            # rows per rank and micro-batch
    grad_accum: int = 1             # micro-batches per optimizer step
    epochs: float = 3.0
    max_iters: int | None = None    # overrides epochs when given
    weight_decay: float = 0.01
    beta2: float = 0.98
    mask_prob: float = 0.15         # pretraining
    limit: int | None = None        # use the first N training examples
    val_limit: int | None = None    # evaluate on the first N validation examples
    log_interval: int = 50
    seed: int = 1337                # every random stream (mingpt_c.nn.seeds)
    threads: int | None = None
    max_nan_steps: int = 5          # consecutive non-finite steps before giving up
    progress: bool = True
    dist_timeout: float = 300.0     # under MPI: seconds a rank waits for the others before aborting
    device: str = "cpu"             # cpu | cuda
    dtype: str | None = None        # GPU matrix products: fp32 | tf32 | bf16; default: bf16 where supported

# ------------------------------------------------------------------ metrics


def metrics(y_true: np.ndarray, y_pred: np.ndarray, names: list) -> dict:
    """Accuracy, per-class precision/recall/F1/support, macro F1, and the
    confusion matrix (rows: true class, columns: predicted)."""
    K = len(names)
    cm = np.zeros((K, K), np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    per = []
    for k in range(K):
        tp = cm[k, k]
        prec = tp / cm[:, k].sum() if cm[:, k].sum() else 0.0
        rec = tp / cm[k].sum() if cm[k].sum() else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per.append({"label": names[k], "precision": float(prec), "recall": float(rec), "f1": float(f1),
                    "support": int(cm[k].sum())})
    return {"accuracy": float(np.trace(cm) / max(cm.sum(), 1)), "n": int(cm.sum()),
            "macro_f1": float(np.mean([p["f1"] for p in per])), "per_class": per,
            "confusion": cm.tolist(), "labels": list(names)}


def predict_logits(model: Encoder, seqs: list, batch_size: int = 64, bar=None) -> np.ndarray:
    """Classifier logits (N, K) for framed sequences, batched by length."""
    pad = model.cfg.pad_token_id
    order = np.argsort([len(s) for s in seqs], kind="stable")
    out = np.empty((len(seqs), model.cfg.num_labels), np.float32)
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        x, m = ed.pad_batch([seqs[j] for j in idx], pad, max_len=model.cfg.block_size)
        out[idx] = model.classify(x, m)[0]
        if bar:
            bar.update(len(idx))
    return out


# ------------------------------------------------------------------ setup


def _tokenize(tok, texts: list[str], max_len: int, what: str, log, truncate: str = "head") -> list:
    seqs, cut = ed.frame(ed.encode_texts(tok, texts), tok, max_len, truncate)
    if cut:
        kept = "first" if truncate == "head" else "first and last"
        log(f"note: {cut:,} of {len(seqs):,} {what} texts are longer than {max_len - 2} tokens "
            f"and were cut to their {kept} {max_len - 2}")
    return seqs


def _new_tokenizer(tc: EncoderTrainConfig, texts: list[str], log):
    if tc.tokenizer:
        from mingpt_c.tokenizers.tokenizer import load_tokenizer
        return ed.BPEWithSpecials(load_tokenizer(tc.tokenizer), tc.lower)
    t0 = time.perf_counter()
    tok = ed.BPEWithSpecials.train(texts, tc.vocab_size, tc.lower, tc.bpe_pattern, tc.phrase_share)
    log(f"tokenizer: BPE with {tok.vocab_size:,} tokens trained in {time.perf_counter() - t0:.1f} s")
    return tok


def _model(tc: EncoderTrainConfig, tok, num_labels: int, mlm: bool, log,
           dev: Device = CPU) -> tuple[Encoder, object]:
    """A fresh model, or one initialised from --init-from (its trunk; heads
    that the task needs and the checkpoint lacks start fresh)."""
    if tc.init_from:
        init = ckpt.load(tc.init_from)
        cfg0, tok = init["cfg"], init["tokenizer"]
        if tok is None:
            raise DataError(f"{tc.init_from} has no tokenizer: cannot turn texts into tokens")
        if tc.max_len > cfg0.block_size:
            raise DataError(f"--max-len {tc.max_len} exceeds the {cfg0.block_size} positions of {tc.init_from}")
        cfg = dataclasses.replace(cfg0, dropout=tc.dropout, pooling=tc.pooling, num_labels=num_labels,
                                  mlm_head=mlm, bigram_buckets=tc.bigram_buckets or cfg0.bigram_buckets,
                                  extra={})
        # the fresh initialisation with the checkpoint's tensors copied in, on
        # the host (as Encoder(cfg, seed=...) draws it), then onto the device
        layout = Layout(ckpt.encoder_slots(cfg))
        params = layout.init(cfg, np.random.default_rng(tc.seed))
        new, old = layout.views(params), Layout(ckpt.encoder_slots(cfg0)).views(init["params"])
        kept = [n for n in new if n in old]
        for n in kept:
            new[n][...] = old[n]
        fresh = [n for n in new if n not in old]
        model = Encoder(cfg, params, device=dev)
        log(f"init: {len(kept)} tensors from {init['path']}" + (f", fresh {', '.join(sorted({n.split('.')[0] for n in fresh}))}" if fresh else ""))
        return model, tok
    cfg = EncoderConfig(vocab_size=tok.vocab_size, block_size=tc.max_len, n_layer=tc.n_layer, n_head=tc.n_head,
                        n_embd=tc.n_embd, dropout=tc.dropout, act=tc.act, pre_ln=tc.pre_ln, pooling=tc.pooling,
                        mlm_head=mlm, num_labels=num_labels, pad_token_id=tok.special["[PAD]"],
                        bigram_buckets=tc.bigram_buckets)
    _check_memory(tc, cfg, mlm, dev)
    return Encoder(cfg, seed=tc.seed, device=dev), tok


def _check_memory(tc: EncoderTrainConfig, cfg: EncoderConfig, mlm: bool, dev: Device) -> None:
    """Refuses, before the model is allocated, what cannot fit (called
    first with the vocabulary the BPE will have at most, before training it)."""
    dev.check_fits(memory_bytes(Layout(ckpt.encoder_slots(cfg)).size, cfg, tc.batch_size, tc.max_len, True,
                                tc.batch_size * tc.max_len * cfg.vocab_size if mlm else 0),
                   f"training this encoder ({cfg.n_layer} layers, width {cfg.n_embd}, vocabulary "
                   f"{cfg.vocab_size}, {cfg.bigram_buckets:,} bigram buckets) at batch {tc.batch_size}")


def _check_before_tokenizer(tc: EncoderTrainConfig, num_labels: int, mlm: bool, dev: Device) -> None:
    if not tc.init_from and not tc.tokenizer:
        _check_memory(tc, EncoderConfig(vocab_size=tc.vocab_size, block_size=tc.max_len, n_layer=tc.n_layer,
                                        n_head=tc.n_head, n_embd=tc.n_embd, mlm_head=mlm,
                                        num_labels=num_labels, bigram_buckets=tc.bigram_buckets), mlm, dev)


def _resumed(run: Run):
    """(model at its training weights, tokenizer, AdamW's (m, v, t, ...), the
    weight average or None) from the run's latest checkpoint."""
    path = run.dir / "latest"
    try:
        loaded = ckpt.load(path, with_optimizer=True)
    except CheckpointError as e:
        raise CheckpointError(f"cannot resume from {path}: {e}") from None
    if loaded["tokenizer"] is None:
        raise CheckpointError(f"cannot resume from {path}: it has no tokenizer")
    weights, average = training_weights(loaded)
    return Encoder(loaded["cfg"], weights, device=run.device), loaded["tokenizer"], loaded["optimizer"], average


def _optimizer(tc: EncoderTrainConfig, model: Encoder, moments=None) -> AdamW:
    opt = AdamW(model.params, model.layout.decay_mask(), tc.beta1, tc.beta2, 1e-8, tc.weight_decay, tc.grad_clip)
    if moments is not None:
        opt.load_moments(moments[0], moments[1])
        opt.t = moments[2]
    return opt


def _schedule(tc: EncoderTrainConfig, world, n: int) -> tuple[int, int]:
    """(global batches per epoch, iterations of the run): a step takes
    grad_accum global batches of batch_size rows per rank; the last step of
    an epoch may take fewer."""
    nb = -(-n // (tc.batch_size * world.size))
    per_epoch = -(-nb // tc.grad_accum)
    return nb, tc.max_iters if tc.max_iters is not None else max(1, int(round(tc.epochs * per_epoch)))

# ------------------------------------------------------------------ the loop


def _fit(run: Run, model: Encoder, opt: AdamW, seqs: list, total: int, pos, prepare, loss_of, evaluate) -> int:
    """The loop of both tasks, from the data position pos (epoch, batch):
    each step takes up to grad_accum global batches of similar lengths from
    the epoch's order; every rank pads each global batch, prepare(x, mask,
    idx, number) turns it into the task's inputs and per-row item counts
    (rows, masked tokens), and the rank takes its rows through
    loss_of(*inputs, seed=...) and backward. evaluate(it, epoch) after each
    epoch and at the last iteration. Returns the iteration reached."""
    tc, world = run.cfg, run.world
    GB = tc.batch_size * world.size
    rows = slice(world.rank * tc.batch_size, (world.rank + 1) * tc.batch_size)
    lengths = np.array([len(s) for s in seqs])
    nb, _ = _schedule(tc, world, len(seqs))
    pad = model.cfg.pad_token_id
    it, order, order_epoch = run.start, None, -1
    while it < total and not run.should_stop():
        if order_epoch != pos.epoch:   # an epoch's order, from (seed, epoch): a resumed run sees the same
            order = ed.length_batches(lengths, GB, stream_rng(tc.seed, STREAM_BATCHES, pos.epoch))
            order_epoch = pos.epoch
        micro = []                     # (this rank's inputs, its items, the batch's items, real tokens)
        for b in range(pos.batch, min(pos.batch + tc.grad_accum, nb)):
            x, m = ed.pad_batch([seqs[i] for i in order[b]], pad, max_len=tc.max_len)
            inputs, counts = prepare(x, m, order[b], pos.epoch * nb + b)
            micro.append(([a[rows] for a in inputs], int(counts[rows].sum()), int(counts.sum()), int(m.sum())))
        n_step = sum(mb[2] for mb in micro)
        lr = lr_at(it, tc.lr, tc.min_lr, tc.warmup_iters, total)
        model.zero_grad()
        loss = 0.0
        for j, (inputs, n, _, _) in enumerate(micro):
            if len(inputs[0]):         # a short last batch may leave a rank no rows
                scale, w = run.weights(n, n_step)
                loss += w * loss_of(*inputs, seed=dropout_seed(tc.seed, it, j, world.rank))
                model.backward(scale)
        loss = run.all_reduce(model.grads, loss)
        norm = run.step(opt, model.grads, loss, lr, it)
        it, pos.batch = it + 1, pos.batch + len(micro)
        run.tick(it, loss, lr, norm, sum(mb[3] for mb in micro))
        if pos.batch == nb:
            pos.epoch, pos.batch = pos.epoch + 1, 0
        if pos.batch == 0 or it == total:
            evaluate(it, pos.epoch + pos.batch / nb if pos.batch else pos.epoch)
    return it


def _position(run: Run) -> SimpleNamespace:
    """Where the data stands: batch `batch` of epoch `epoch` comes next."""
    st = run.resumed_state
    return SimpleNamespace(epoch=int(st.get("epoch", 0)), batch=int(st.get("batch", 0)))

# ------------------------------------------------------------------ classification


def train_classifier(tc: EncoderTrainConfig, resume: bool = False, log=print, given: dict | None = None) -> dict:
    with Run(tc, resume, given, log) as run:
        tc = run.cfg
        if tc.recipe and not resume:
            run.say(f"recipe: {tc.recipe}")
        texts, labels = ed.read_jsonl(tc.train_file)
        if tc.limit:
            texts, labels = texts[:tc.limit], labels[:tc.limit]
        names = ed.label_names(labels)
        if len(names) < 2:
            raise DataError(f"{tc.train_file}: every example has the label {json.dumps(names[0])}; "
                            "a classifier needs at least two classes")
        y = ed.label_ids(labels, names, tc.train_file)
        val = None
        if tc.val_file:
            vt, vl = ed.read_jsonl(tc.val_file)
            if tc.val_limit:
                vt, vl = vt[:tc.val_limit], vl[:tc.val_limit]
            val = (vt, ed.label_ids(vl, names, tc.val_file))
        moments = average = None
        if resume:
            model, tok, moments, average = _resumed(run)
            if model.cfg.extra.get("labels") != names:
                raise DataError(f"{tc.train_file}: its labels differ from those of the run in {tc.out}")
        else:
            _check_before_tokenizer(tc, len(names), False, run.device)
            tok = None if tc.init_from else _new_tokenizer(tc, texts, run.say)
            model, tok = _model(tc, tok, len(names), False, run.say, run.device)
        cfg = model.cfg
        cfg.extra = {"labels": names, "max_len": tc.max_len, "truncate": tc.truncate}
        opt = _optimizer(tc, model, moments)
        run.average_weights(opt, average)
        seqs = _tokenize(tok, texts, tc.max_len, "training", run.say, tc.truncate)
        vseqs = _tokenize(tok, val[0], tc.max_len, "validation", run.say, tc.truncate) if val else None
        _, total = _schedule(tc, run.world, len(seqs))
        bigrams = f", {cfg.bigram_buckets:,} bigram buckets" if cfg.bigram_buckets else ""
        run.say(f"model: encoder, {cfg.n_layer} layers, {cfg.n_head} heads, width {cfg.n_embd}, max length "
                f"{tc.max_len}, vocab {cfg.vocab_size}{bigrams}, {cfg.pooling} pooling: "
                f"{model.num_params() / 1e6:.2f}M parameters")
        run.say_device()
        run.say(f"data: {len(seqs):,} examples, {len(names)} classes ({', '.join(map(str, names))}), "
                f"mean length {np.mean([len(s) for s in seqs]):.0f} tokens; {total:,} iterations of "
                f"{tc.batch_size * run.world.size * tc.grad_accum}")
        pos, result = _position(run), {}
        run.begin(int(run.resumed_state.get("iter", 0)), total,
                  save=lambda path, st: ckpt.save(path, cfg, tokenizer=tok, optimizer=opt, train_state=st,
                                                  **run.checkpoint_weights(model.params)),
                  state=lambda it: {"val_accuracy": result.get("val_accuracy"), "epoch": pos.epoch,
                                    "batch": pos.batch},
                  best_key="best_val_accuracy", best_mode="max",
                  command=f"mingpt encoder train --train {tc.train_file} --out {run.dir}")
        specials = list(tok.special.values())

        def prepare(x, m, idx, number):
            if tc.token_dropout > 0:
                m = ed.drop_tokens(x, m, specials, stream_rng(tc.seed, STREAM_TOKEN_DROPOUT, number),
                                   tc.token_dropout)
            return (x, m, y[idx]), np.ones(len(idx), np.int64)

        def loss_of(x, m, labels, seed):
            return model.classify(x, m, labels, train=True, seed=seed)[1]

        def evaluate(it, epoch):
            rec = {"type": "eval", "iter": it, "epoch": epoch, "seconds": run.elapsed()}
            if val:
                with run.evaluating(model.params):
                    logits = predict_logits(model, vseqs)
                res = metrics(val[1], logits.argmax(1), names)
                rec.update(val_loss=mean_cross_entropy(logits, val[1]), val_accuracy=res["accuracy"],
                           val_macro_f1=res["macro_f1"])
                run.say(f"epoch {epoch:g} (iter {it}): val accuracy {res['accuracy']:.4f}")
                result["val_accuracy"] = res["accuracy"]
                run.save_best(it, res["accuracy"])
            run.record(rec)
            run.save_latest(it)

        it = _fit(run, model, opt, seqs, total, pos, prepare, loss_of, evaluate)
        if not val and not run.stopped:
            run.save_best(it)   # no validation: the model the run ends with
        return run.finish(it, dict(result, best_val_accuracy=run.best if val else None))


def _framing(cfg) -> tuple[int, str]:
    return cfg.extra.get("max_len", cfg.block_size), cfg.extra.get("truncate", "head")


def load_classifier(path, device: Device = CPU) -> tuple[Encoder, object, list]:
    loaded = ckpt.load(path)
    cfg = loaded["cfg"]
    if not cfg.num_labels:
        raise DataError(f"{loaded['path']} has no classifier head: train one with "
                        f"`mingpt encoder train --init-from {path}`")
    if loaded["tokenizer"] is None:
        raise DataError(f"{loaded['path']} has no tokenizer")
    return (Encoder(cfg, loaded["params"], device=device), loaded["tokenizer"],
            cfg.extra.get("labels") or list(range(cfg.num_labels)))


def evaluate_file(path, data_file, batch_size: int = 64, limit: int | None = None, log=print,
                  progress: bool = False, device: Device = CPU) -> dict:
    model, tok, names = load_classifier(path, device)
    texts, labels = ed.read_jsonl(data_file)
    if limit:
        texts, labels = texts[:limit], labels[:limit]
    y = ed.label_ids(labels, names, data_file)
    seqs = _tokenize(tok, texts, _framing(model.cfg)[0], "evaluation", log, _framing(model.cfg)[1])
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(seqs), unit="ex", dynamic_ncols=True)
    try:
        logits = predict_logits(model, seqs, batch_size, bar)
    finally:
        if bar:
            bar.close()
    return metrics(y, logits.argmax(1), names)


def predict_texts(path, texts: list[str], log=print, device: Device = CPU) -> tuple[list, np.ndarray]:
    """(label names, probabilities (N, K)) for texts."""
    model, tok, names = load_classifier(path, device)
    for i, t in enumerate(texts):
        if not t.strip():
            raise DataError(f"text {i + 1} is empty: nothing to classify")
    seqs = _tokenize(tok, texts, _framing(model.cfg)[0], "given", log, _framing(model.cfg)[1])
    return names, softmax(predict_logits(model, seqs))

# ------------------------------------------------------------------ pretraining


def read_pretrain_texts(path) -> list[str]:
    """Documents of a pretraining file: the texts of a JSON Lines file (a
    .jsonl or .jsonl.xz name), else the non-blank lines of a text file."""
    p = Path(path)
    if ".jsonl" in p.name:
        return ed.read_jsonl(p, need_label=False)[0]
    from mingpt_c import data
    data.check_text_file(p)
    docs = [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not docs:
        raise DataError(f"{p}: no text")
    return docs


def pretrain(tc: EncoderTrainConfig, resume: bool = False, log=print, given: dict | None = None) -> dict:
    """Masked-LM pretraining: documents cut into pieces of max_len - 2 tokens."""
    with Run(tc, resume, given, log) as run:
        tc = run.cfg
        texts = read_pretrain_texts(tc.train_file)
        if tc.limit:
            texts = texts[:tc.limit]
        moments = average = None
        if resume:
            model, tok, moments, average = _resumed(run)
        else:
            _check_before_tokenizer(tc, 0, True, run.device)
            tok = None if tc.init_from else _new_tokenizer(tc, texts, run.say)
            model, tok = _model(tc, tok, 0, True, run.say, run.device)
        cfg = model.cfg
        cfg.extra = {"max_len": tc.max_len}
        opt = _optimizer(tc, model, moments)
        run.average_weights(opt, average)
        keep = tc.max_len - 2
        pieces = [ids[i:i + keep] for ids in ed.encode_texts(tok, texts) for i in range(0, max(len(ids), 1), keep)]
        pieces = [p for p in pieces if p]
        seqs, _ = ed.frame(pieces, tok, tc.max_len)
        _, total = _schedule(tc, run.world, len(seqs))
        run.say(f"model: encoder (masked LM), {cfg.n_layer} layers, width {cfg.n_embd}, vocab {cfg.vocab_size}: "
                f"{model.num_params() / 1e6:.2f}M parameters; {len(seqs):,} sequences, {total:,} iterations")
        run.say_device()
        pos = _position(run)
        run.begin(int(run.resumed_state.get("iter", 0)), total,
                  save=lambda path, st: ckpt.save(path, cfg, tokenizer=tok, optimizer=opt, train_state=st,
                                                  **run.checkpoint_weights(model.params)),
                  state=lambda it: {"epoch": pos.epoch, "batch": pos.batch},
                  command=f"mingpt encoder pretrain {tc.train_file} --out {run.dir}")
        specials = list(tok.special.values())

        def prepare(x, m, idx, number):
            inp, tgt = ed.mask_tokens(x, m, specials, tok.special["[MASK]"], cfg.vocab_size,
                                      stream_rng(tc.seed, STREAM_MASKING, number), tc.mask_prob)
            return (inp, m, tgt), (tgt != ed.IGNORE).sum(1)   # the loss is a mean over masked tokens

        def loss_of(inp, m, tgt, seed):
            return model.mlm(inp, m, tgt, train=True, seed=seed)

        def evaluate(it, epoch):
            run.record({"type": "eval", "iter": it, "epoch": epoch, "seconds": run.elapsed()})
            run.save_latest(it)

        it = _fit(run, model, opt, seqs, total, pos, prepare, loss_of, evaluate)
        if not run.stopped:
            run.save_best(it)   # no metric: the model the run ends with
        return run.finish(it)
