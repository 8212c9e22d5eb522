"""Pictures: the curves of a run, drawn from its log.jsonl at the end (the
training loss of every log point, each evaluation's losses (keys ending in
_loss), and its accuracies (keys ending in accuracy) in percent on a second
axis; one picture for every family), and attention heatmaps with token
labels (a GPT's self-attention, an encoder-decoder's alignment)."""
from __future__ import annotations

import json
from pathlib import Path


def _label(key: str, suffix: str) -> str:
    name = key[: -len(suffix)].rstrip("_") or key
    return {"train": "train (eval)"}.get(name, name.replace("_", " "))


def plot_log(log_path: Path, png: Path) -> None:
    """Writes png (atomically) from log_path; nothing when there is nothing to draw."""
    if not log_path.exists():
        return
    recs = [json.loads(line) for line in open(log_path) if line.strip()]
    train = [(r["iter"], r["loss"]) for r in recs if r.get("type") == "train" and "loss" in r]
    evals = [r for r in recs if r.get("type") == "eval"]
    loss_keys = sorted({k for r in evals for k in r if k.endswith("_loss")}, key=lambda k: k != "train_loss")
    acc_keys = sorted({k for r in evals for k in r if k.endswith("accuracy")})
    if not train and not loss_keys and not acc_keys:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), lw=0.8, alpha=0.6, label="train (batch)")
    for k in loss_keys:
        pts = [(r["iter"], r[k]) for r in evals if r.get(k) is not None]
        if pts:
            ax.plot(*zip(*pts), "o-", ms=3, label=_label(k, "_loss"))
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    top = ax
    if acc_keys:
        top = ax.twinx()
        for k in acc_keys:
            pts = [(r["iter"], 100 * r[k]) for r in evals if r.get(k) is not None]
            if pts:
                top.plot(*zip(*pts), "s--", ms=3, color="tab:red" if len(acc_keys) == 1 else None,
                         label=f"{_label(k, 'accuracy')} accuracy (%)")
        top.set_ylabel("accuracy (%)")
    handles = [h for a in ([ax] if top is ax else [ax, top]) for h in a.get_legend_handles_labels()[0]]
    if handles:   # one legend for both axes
        top.legend(handles=handles, loc="best", framealpha=0.8)
    fig.tight_layout()
    tmp = png.with_name(png.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(png)


def heatmap(A, col_labels: list[str], row_labels: list[str], path, title: str = "", xlabel: str = "",
            ylabel: str = "") -> None:
    """A (rows, cols) as a grey heatmap, darker = larger, each row and
    column labelled (a space shown as a visible mark); the extension of
    path picks the format."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = A.shape
    fig, ax = plt.subplots(figsize=(max(3.0, 0.45 * cols + 1.8), max(3.0, 0.45 * rows + 1.4)))
    im = ax.imshow(A, cmap="Greys", vmin=0.0, vmax=max(float(A.max()), 1e-9), aspect="auto")
    wide = max((len(s) for s in col_labels), default=1) > 3
    ax.set_xticks(range(cols), [_shown(s) for s in col_labels], rotation=90 if wide else 0)
    ax.set_yticks(range(rows), [_shown(s) for s in row_labels])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.xaxis.set_label_position("top")
    ax.xaxis.tick_top()
    if title:
        ax.set_title(title, fontsize=9, pad=30)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _shown(s: str) -> str:
    """A label as matplotlib should show it: spaces and newlines visible,
    $ not starting mathtext."""
    return s.replace(" ", "\u2423").replace("\n", "\u21b5").replace("$", r"\$") or "\u2205"
