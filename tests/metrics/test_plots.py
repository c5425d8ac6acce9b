"""Plots: a metric against steps (with spreads over seeds) and training curves from log.jsonl files."""
import json

import pytest
from PIL import Image

from mcm_fast.metrics.plots import _nested, plot_metric_vs_steps, plot_training_curves, read_log


def test_metric_vs_steps_writes_a_png(tmp_path):
    rows = [{"model": m, "steps": s, "fd": 10 / s + (m == "teacher"), "spread": 0.1} for m in ("mcm", "teacher")
            for s in (1, 2, 4, 8)]
    path = plot_metric_vs_steps(rows, tmp_path / "plots" / "fd.png", "fd", series="model", title="FD")
    assert path.is_file() and Image.open(path).size == (600, 420)
    log_path = plot_metric_vs_steps(rows, tmp_path / "fd-log.png", "fd", series="model", log_metric=True)
    assert Image.open(log_path).size == (600, 420) and log_path.read_bytes() != path.read_bytes()
    with pytest.raises(ValueError, match=r"rows: expected 'steps' and 'fid' in every row"):
        plot_metric_vs_steps(rows, tmp_path / "x.png", "fid")


def test_metric_panels_with_best_levels(tmp_path):
    """A tuple of metrics is one panel each, side by side; best rows are dashed levels in every panel."""
    rows = [{"model": m, "steps": s, "fd": 10 / s, "recall": 0.5 + s / 20} for m in ("a", "b") for s in (1, 4, 16)]
    path = plot_metric_vs_steps(rows, tmp_path / "p.png", ("fd", "recall"), series="model",
                                best={"best": {"fd": 1.0, "recall": 0.9}})
    plain = plot_metric_vs_steps(rows, tmp_path / "q.png", ("fd", "recall"), series="model")
    assert Image.open(path).size == (1200, 420) and path.read_bytes() != plain.read_bytes()
    with pytest.raises(ValueError, match=r"'fd', 'precision'"):
        plot_metric_vs_steps(rows, tmp_path / "x.png", ("fd", "precision"))


def test_training_curves_from_logs(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        lines = [{"step": i, "loss": 1.0 / i} for i in range(1, 20)] + [{"step": 19, "eval": {"fd": 1.0}}]
        (tmp_path / name / "log.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    assert len(read_log(tmp_path / "a")) == 20
    path = plot_training_curves({"a": tmp_path / "a", "b": tmp_path / "b" / "log.jsonl"}, tmp_path / "curves.png")
    assert path.is_file()
    with pytest.raises(FileNotFoundError, match="no training log here"):
        read_log(tmp_path / "missing")


def test_training_curves_read_nested_keys(tmp_path):
    rows = [{"step": 1, "loss": 2.0}, {"step": 2, "eval": {"fd": 30.0}}, {"step": 3, "eval": {"fd": 20.0}}]
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert [_nested(r, "eval.fd") for r in rows] == [None, 30.0, 20.0]
    assert [_nested(r, "loss") for r in rows] == [2.0, None, None]
    fd = plot_training_curves({"a": tmp_path}, tmp_path / "fd.png", key="eval.fd")
    loss = plot_training_curves({"a": tmp_path}, tmp_path / "loss.png")
    assert fd.read_bytes() != loss.read_bytes()
