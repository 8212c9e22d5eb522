"""The curves of a run, drawn from its log.jsonl at the end: the training
loss of every log point, each evaluation's losses (keys ending in _loss),
and its accuracies (keys ending in accuracy) in percent on a second axis.
One picture for every family."""
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
