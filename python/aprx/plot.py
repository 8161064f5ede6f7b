"""Plot a training run's loss curves from its metrics JSONL (matplotlib, Agg, lazily imported)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["read_metrics", "plot_losses"]


def read_metrics(path: PathLike) -> List[Dict[str, Any]]:
    """The records of a metrics JSONL file (blank or torn trailing lines are skipped)."""
    out: List[Dict[str, Any]] = []
    p = Path(path)
    if not p.is_file():
        return out
    for line in p.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def plot_losses(
    metrics: PathLike,
    out_png: PathLike,
    *,
    title: Optional[str] = None,
    target_val_loss: Optional[float] = None,
) -> Tuple[Optional[Path], Optional[str]]:
    """Write a train/val loss PNG. Returns ``(path, None)``, or ``(None, note)`` when skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except Exception as exc:  # ImportError, or a broken backend
        return None, f"plot skipped: matplotlib unavailable ({exc})"
    records = read_metrics(metrics)
    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    if not train and not val:
        return None, "plot skipped: no metrics recorded"
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:
        if train:
            ax.plot(*zip(*train, strict=True), label="train loss", linewidth=1.0, alpha=0.8)
        if val:
            ax.plot(*zip(*val, strict=True), "o-", label="val loss", linewidth=1.5, markersize=3)
        if target_val_loss is not None:
            ax.axhline(target_val_loss, color="gray", linestyle="--", label="target val loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.set_title(title or "aprx training")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        out = Path(out_png)
        tmp = out.with_name(f".{out.name}.tmp")
        fig.savefig(tmp, format="png")
        os.replace(tmp, out)
    finally:
        plt.close(fig)
    return out, None
