"""Plots (matplotlib, written as PNG without a display): a metric against the number of sampling steps, and
training curves from the log.jsonl of one or more runs."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, safe on servers and in tests
import matplotlib.pyplot as plt


def plot_metric_vs_steps(rows: list[dict], path: str | Path, metric: str | tuple[str, ...], series: str | None = None,
                         title: str | None = None, log_metric: bool = False,
                         xlabel: str = "sampling steps (network calls)", best: dict[str, dict] | None = None) -> Path:
    """One line per value of rows[i][series] (one line if None) of rows[i][metric] against rows[i]["steps"],
    log-scaled steps (and the first metric, with log_metric); rows with "spread" (a standard deviation over seeds)
    get error bars. A tuple of metrics draws one panel each; best ({label: row}) adds a dashed level per row."""
    metrics = (metric,) if isinstance(metric, str) else tuple(metric)
    lines = defaultdict(list)
    for row in rows:
        if "steps" not in row or any(m not in row for m in metrics):
            raise ValueError(f"rows: expected 'steps' and {', '.join(map(repr, metrics))} in every row, got keys "
                             f"{sorted(row)}")
        lines[row.get(series, metrics[0]) if series else metrics[0]].append(row)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.5), dpi=120, squeeze=False)
    for i, (ax, name) in enumerate(zip(axes[0], metrics)):
        for label, points in lines.items():
            points = sorted(points, key=lambda r: r["steps"])
            ax.errorbar([r["steps"] for r in points], [r[name] for r in points],
                        yerr=[r.get("spread", 0.0) for r in points], marker="o", capsize=3, label=str(label))
        for j, (label, row) in enumerate((best or {}).items()):
            ax.axhline(row[name], linestyle="--", linewidth=1, color=f"C{len(lines) + j}", label=label)
        ax.set_xscale("log", base=2)
        if log_metric and i == 0:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if (series or best) and i == 0:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def read_log(path: str | Path) -> list[dict]:
    """The rows of a run's log.jsonl (a run directory or the file itself)."""
    path = Path(path)
    path = path / "log.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training log here")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_training_curves(runs: dict[str, str | Path], path: str | Path, key: str = "loss") -> Path:
    """rows[key] against the step for each run {label: run directory or log.jsonl}; log-scaled values.

    A dotted key reads a nested value: "eval.fd_mnist" is the FD of the evaluations during training.
    """
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for label, run in runs.items():
        points = [(r["step"], _nested(r, key)) for r in read_log(run)]
        points = [(step, value) for step, value in points if value is not None]
        ax.plot([step for step, _ in points], [value for _, value in points], label=label, linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _nested(row: dict, key: str):
    """row["a"]["b"] for key "a.b"; None where the row has no such value."""
    for part in key.split("."):
        if not isinstance(row, dict) or part not in row:
            return None
        row = row[part]
    return row


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
