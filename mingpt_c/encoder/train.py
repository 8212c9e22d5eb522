"""Encoder training: masked-LM pretraining on text, sequence classification
on JSON Lines, evaluation (accuracy, per-class precision/recall/F1,
confusion matrix) and prediction.

Run directory (--out), as GPT runs:
    run_config.json   every resolved option
    latest/ best/     encoder checkpoints (mingpt_c.encoder_checkpoint);
                      best/ is the best validation accuracy (pretraining,
                      or no --val: the last epoch)
    log.jsonl         train records every log interval, one eval per epoch

A from-scratch run trains a byte-level BPE vocabulary (the project's C
trainer) on its training texts, with BERT's special tokens added. Batches
group texts of similar length (encoder/data.py, length_batches), so little
compute goes to padding. Schedule: linear warmup, cosine decay
(optim.lr_at). Ctrl-C finishes the step, saves latest/ and stops.
--device cuda trains on the GPU (the model's buffers and AdamW's moments in
GPU memory); checkpoints hold host copies, so a run may resume, and a model
be evaluated, on either device.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mingpt_c.encoder import checkpoint as ckpt
from mingpt_c.encoder import data as ed
from mingpt_c._lib import set_num_threads
from mingpt_c.device import CPU, Device, default_dtype
from mingpt_c.errors import CheckpointError, DataError, MinGPTError
from mingpt_c.encoder.model import Encoder, EncoderConfig
from mingpt_c.nn.params import Layout
from mingpt_c.nn.optim import AdamW, lr_at
from mingpt_c.run.signals import StopFlag


@dataclass
class EncoderTrainConfig:
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
    batch_size: int = 32
    epochs: float = 3.0
    max_iters: int | None = None    # overrides epochs when given
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_iters: int = 200
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.98
    grad_clip: float = 1.0
    mask_prob: float = 0.15         # pretraining
    limit: int | None = None        # use the first N training examples
    val_limit: int | None = None    # evaluate on the first N validation examples
    log_interval: int = 50
    seed: int = 1337
    threads: int | None = None
    progress: bool = True
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


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)

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


def _device(tc: EncoderTrainConfig) -> Device:
    """The run's device; on the GPU tc.dtype is resolved to its default."""
    if tc.device == "cuda" and tc.dtype is None:
        Device("cuda")   # says plainly when there is no GPU
        tc.dtype = default_dtype("cuda")
    return Device(tc.device, tc.dtype)


def _say_device(dev: Device, tc: EncoderTrainConfig, log) -> None:
    if dev.is_cuda:
        from mingpt_c import cuda
        log(f"device: {cuda.info()['name']}, {tc.dtype} matrix products")


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
    return Encoder(cfg, seed=tc.seed, device=dev), tok


def _resumed(tc: EncoderTrainConfig, dev: Device = CPU):
    """(model, tokenizer, ((m, v, t), train_state)) from the run's latest checkpoint."""
    path = Path(tc.out) / "latest"
    try:
        loaded = ckpt.load(path, with_optimizer=True)
    except CheckpointError as e:
        raise CheckpointError(f"cannot resume from {path}: {e}") from None
    if loaded["optimizer"] is None or loaded["train_state"] is None or loaded["tokenizer"] is None:
        raise CheckpointError(f"cannot resume from {path}: it has no optimizer state, train state or tokenizer")
    return (Encoder(loaded["cfg"], loaded["params"], device=dev), loaded["tokenizer"],
            (loaded["optimizer"], loaded["train_state"]))


class _Run:
    """The parts the two loops share: optimizer, schedule, log, checkpoints, bar."""

    def __init__(self, tc: EncoderTrainConfig, model: Encoder, tok, total: int, log, resume=None):
        self.tc, self.model, self.tok, self.total, self.log = tc, model, tok, total, log
        self.dir = Path(tc.out)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "run_config.json").write_text(json.dumps(dataclasses.asdict(tc), indent=2) + "\n")
        self.opt = AdamW(model.params, model.layout.decay_mask(), tc.beta1, tc.beta2, 1e-8,
                         tc.weight_decay, tc.grad_clip)
        self.logf = open(self.dir / "log.jsonl", "a")
        self.bar = None
        if tc.progress:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=int(resume[1]["iter"]) if resume else 0, unit="it",
                            dynamic_ncols=True)
        self.it, self.losses, self.t0, self.tokens = 0, [], time.perf_counter(), 0
        self.epoch, self.k, self.stopped = 0, 0, False   # where the data stands: batch k of epoch
        if resume is not None:
            (m, v, t), state = resume
            self.opt.load_moments(m, v)
            self.opt.t = t
            self.it, self.epoch, self.k = int(state["iter"]), int(state["epoch"]), int(state.get("batch", 0))

    def batches(self, lengths: np.ndarray, stop):
        """Index batches from where the run stands, epoch after epoch (each
        epoch's order drawn from (seed, epoch), so a resumed run sees what the
        uninterrupted one would); None after each epoch, and after the last
        batch of the run. Returns early, with self.stopped set, on Ctrl-C."""
        while self.it < self.total:
            rng = np.random.default_rng([self.tc.seed, self.epoch])
            for k, b in enumerate(ed.length_batches(lengths, self.tc.batch_size, rng)):
                if k < self.k:
                    continue
                if self.it >= self.total:
                    break
                if stop.requested:
                    self.stopped = True
                    return
                self.k = k + 1
                yield b
            self.epoch, self.k = self.epoch + 1, 0
            yield None

    def echo(self, msg: str) -> None:
        (self.bar.write if self.bar else self.log)(msg)

    def record(self, rec: dict) -> None:
        self.logf.write(json.dumps(rec) + "\n")
        self.logf.flush()

    def step(self, loss: float, n_tokens: int) -> None:
        tc = self.tc
        lr = lr_at(self.it, tc.lr, tc.min_lr, tc.warmup_iters, self.total)
        if not math.isfinite(loss):
            raise MinGPTError(f"training diverged at iteration {self.it} (loss {loss}): try a lower --lr")
        norm = self.opt.step(self.model.grads, lr)
        self.it += 1
        self.losses.append(loss)
        self.tokens += n_tokens
        if self.it % tc.log_interval == 0:
            tps = self.tokens / max(time.perf_counter() - self.t0, 1e-9)
            self.record({"type": "train", "iter": self.it, "loss": float(np.mean(self.losses)), "lr": lr,
                         "grad_norm": norm, "tokens_per_s": tps})
            if self.bar:
                self.bar.set_postfix(loss=f"{np.mean(self.losses):.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
            self.losses = []
        if self.bar:
            self.bar.update(1)

    def save(self, name: str, state: dict) -> None:
        ckpt.save(self.dir / name, self.model.cfg, self.model.params, self.tok, self.opt,
                  dict(state, iter=self.it, epoch=self.epoch, batch=self.k,
                       options=dataclasses.asdict(self.tc)))

    def train(self, seqs: list, lengths: np.ndarray, loss_of, end_of_epoch, state=dict) -> None:
        """The loop both tasks run: each batch padded, loss_of(x, mask, idx)
        taken back through the model, one optimizer step; end_of_epoch()
        after each epoch. Ctrl-C saves latest with state() and the position."""
        model, pad = self.model, self.model.cfg.pad_token_id
        try:
            with StopFlag() as stop:
                for b in self.batches(lengths, stop):
                    if b is None:
                        end_of_epoch()
                        continue
                    x, m = ed.pad_batch([seqs[i] for i in b], pad, max_len=self.tc.max_len)
                    model.zero_grad()
                    loss = loss_of(x, m, b)
                    model.backward()
                    self.step(loss, int(m.sum()))
                if self.stopped:
                    self.save("latest", state())
        finally:
            if self.bar:
                self.bar.close()
            self.logf.close()
        if self.stopped:
            self.echo(f"interrupted at iteration {self.it}: checkpoint saved in {self.dir / 'latest'}; "
                      f"continue with the same command and --resume")

    def summary(self) -> dict:
        return {"iter": self.it, "interrupted": self.stopped, "out": str(self.dir),
                "seconds": time.perf_counter() - self.t0}


def _iters(tc: EncoderTrainConfig, per_epoch: int) -> int:
    return tc.max_iters if tc.max_iters is not None else max(1, int(round(tc.epochs * per_epoch)))

# ------------------------------------------------------------------ classification


def train_classifier(tc: EncoderTrainConfig, resume: bool = False, log=print) -> dict:
    if tc.threads:
        set_num_threads(tc.threads)
    dev = _device(tc)
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
    resume_state = None
    if resume:
        model, tok, resume_state = _resumed(tc, dev)
        if model.cfg.extra.get("labels") != names:
            raise DataError(f"{tc.train_file}: its labels differ from those of the run in {tc.out}")
    else:
        tok = None if tc.init_from else _new_tokenizer(tc, texts, log)
        model, tok = _model(tc, tok, len(names), False, log, dev)
    cfg = model.cfg
    cfg.extra = {"labels": names, "max_len": tc.max_len, "truncate": tc.truncate}
    seqs = _tokenize(tok, texts, tc.max_len, "training", log, tc.truncate)
    vseqs = _tokenize(tok, val[0], tc.max_len, "validation", log, tc.truncate) if val else None
    lengths = np.array([len(s) for s in seqs])
    per_epoch = -(-len(seqs) // tc.batch_size)
    total = _iters(tc, per_epoch)
    bigrams = f", {cfg.bigram_buckets:,} bigram buckets" if cfg.bigram_buckets else ""
    log(f"model: encoder, {cfg.n_layer} layers, {cfg.n_head} heads, width {cfg.n_embd}, max length "
        f"{tc.max_len}, vocab {cfg.vocab_size}{bigrams}, {cfg.pooling} pooling: "
        f"{model.num_params() / 1e6:.2f}M parameters")
    _say_device(dev, tc, log)
    log(f"data: {len(seqs):,} examples, {len(names)} classes ({', '.join(map(str, names))}), "
        f"mean length {lengths.mean():.0f} tokens; {total:,} iterations of {tc.batch_size}")
    run = _Run(tc, model, tok, total, log, resume_state)
    best = float((resume_state[1].get("best_val_accuracy") if resume_state else None) or -1.0)
    result = {}

    def end_of_epoch():
        nonlocal best
        rec = {"type": "eval", "iter": run.it, "epoch": run.epoch, "seconds": time.perf_counter() - run.t0}
        if val:
            res = metrics(val[1], predict_logits(model, vseqs).argmax(1), names)
            rec.update(val_accuracy=res["accuracy"], val_macro_f1=res["macro_f1"])
            run.echo(f"epoch {run.epoch} (iter {run.it}): val accuracy {res['accuracy']:.4f}")
            result["val_accuracy"] = res["accuracy"]
            if res["accuracy"] > best:
                best = res["accuracy"]
                run.save("best", {"val_accuracy": best, "best_val_accuracy": best})
        run.record(rec)
        run.save("latest", {"val_accuracy": result.get("val_accuracy"), "best_val_accuracy": best if val else None})

    specials = list(tok.special.values())

    def cls_loss(x, m, b):
        if tc.token_dropout > 0:
            m = ed.drop_tokens(x, m, specials, np.random.default_rng([tc.seed, run.it, 2]), tc.token_dropout)
        return model.classify(x, m, y[b], train=True, seed=run.it)[1]

    run.train(seqs, lengths, cls_loss, end_of_epoch, lambda: {"best_val_accuracy": best if val else None})
    if not val and not run.stopped:
        run.save("best", {})
    result.update(run.summary(), best_val_accuracy=best if val else None)
    return result


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
    return names, softmax(predict_logits(model, seqs).astype(np.float64))

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


def pretrain(tc: EncoderTrainConfig, resume: bool = False, log=print) -> dict:
    """Masked-LM pretraining: documents cut into pieces of max_len - 2 tokens."""
    if tc.threads:
        set_num_threads(tc.threads)
    dev = _device(tc)
    texts = read_pretrain_texts(tc.train_file)
    if tc.limit:
        texts = texts[:tc.limit]
    resume_state = None
    if resume:
        model, tok, resume_state = _resumed(tc, dev)
    else:
        tok = None if tc.init_from else _new_tokenizer(tc, texts, log)
        model, tok = _model(tc, tok, 0, True, log, dev)
    cfg = model.cfg
    cfg.extra = {"max_len": tc.max_len}
    keep = tc.max_len - 2
    pieces = [ids[i:i + keep] for ids in ed.encode_texts(tok, texts) for i in range(0, max(len(ids), 1), keep)]
    pieces = [p for p in pieces if p]
    seqs, _ = ed.frame(pieces, tok, tc.max_len)
    lengths = np.array([len(s) for s in seqs])
    total = _iters(tc, -(-len(seqs) // tc.batch_size))
    log(f"model: encoder (masked LM), {cfg.n_layer} layers, width {cfg.n_embd}, vocab {cfg.vocab_size}: "
        f"{model.num_params() / 1e6:.2f}M parameters; {len(seqs):,} sequences, {total:,} iterations")
    _say_device(dev, tc, log)
    specials = list(tok.special.values())
    run = _Run(tc, model, tok, total, log, resume_state)

    def mlm_loss(x, m, b):
        inp, tgt = ed.mask_tokens(x, m, specials, tok.special["[MASK]"], cfg.vocab_size,
                                  np.random.default_rng([tc.seed, run.it, 1]), tc.mask_prob)
        return model.mlm(inp, m, tgt, train=True, seed=run.it)

    def end_of_epoch():
        run.record({"type": "eval", "iter": run.it, "epoch": run.epoch, "seconds": time.perf_counter() - run.t0})
        run.save("latest", {})

    run.train(seqs, lengths, mlm_loss, end_of_epoch)
    if not run.stopped:
        run.save("best", {})
    return run.summary()
