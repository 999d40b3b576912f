"""The evaluation figures written next to a model card: ROC, calibration, example slices.

matplotlib's object-oriented API (``Figure`` + ``savefig``) is used rather than
``pyplot``, so that no global backend or figure state is touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dicom_node.training.metrics import calibration_bins, roc_auc, roc_curve


@dataclass(frozen=True)
class Example:
    """One slice to show: brain-windowed image in [0, 1], true and predicted masks (or None)."""

    title: str
    image: np.ndarray
    truth: np.ndarray | None
    prediction: np.ndarray | None


def _figure(width: float, height: float):  # type: ignore[no-untyped-def]
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> Path:
    """ROC curves (one per split: truth, scores) with their AUC in the legend."""
    fig = _figure(4.5, 4.5)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
    for name, (truth, scores) in curves.items():
        fpr, tpr, _ = roc_curve(truth, scores)
        ax.step(fpr, tpr, where="post", label=f"{name} (AUC {roc_auc(truth, scores):.3f}, n={len(truth)})")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path)
    return path


def plot_calibration(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str, bins: int = 5
) -> Path:
    """Reliability diagram: observed rate against mean predicted probability per bin."""
    fig = _figure(4.5, 4.5)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
    for name, (truth, scores) in curves.items():
        table = calibration_bins(truth, scores, bins=bins)
        ax.plot(
            [row["mean_predicted"] for row in table],
            [row["observed"] for row in table],
            marker="o",
            label=f"{name} ({bins} bins)",
        )
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed fraction positive")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.savefig(path)
    return path


def plot_examples(examples: Sequence[Example], path: Path, title: str, columns: int = 4) -> Path:
    """A grid of slices with true (green) and predicted (red) contours."""
    rows = max(1, int(np.ceil(len(examples) / columns)))
    fig = _figure(3.0 * columns, 3.2 * rows)
    fig.suptitle(f"{title}  (green: truth, red: prediction)")
    for k, example in enumerate(examples):
        ax = fig.add_subplot(rows, columns, k + 1)
        ax.imshow(example.image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        for mask, colour in ((example.truth, "lime"), (example.prediction, "red")):
            if mask is not None and mask.any() and not mask.all():
                ax.contour(mask.astype(np.float32), levels=[0.5], colors=colour, linewidths=1.0)
        ax.set_title(example.title, fontsize=8)
        ax.set_axis_off()
    fig.savefig(path)
    return path
