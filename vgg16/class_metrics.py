"""Every class seen: the confusion matrix of a validation pass and what follows from it (per-class precision,
recall, F1 and support; macro-F1; balanced accuracy), and how a run shows them (a table, confusion.png).

The arithmetic is scikit-learn's (`confusion_matrix`, `precision_recall_fscore_support`), on the top-1
predictions that `engine.evaluate` gathers once per image whatever the process count. The averages are over the
classes that have validation images (a class absent from validation has no recall to average), as
`classification_report(labels=those classes)` gives them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

# Up to this many classes confusion.png shows the whole matrix, labelled; above it, the most confused pairs.
FULL_MATRIX_CLASSES = 50
# The per-class table of results.md and the model card lists every class up to this many, else the lowest recall.
TABLE_CLASSES = 30


def class_report(references: np.ndarray, predictions: np.ndarray, class_names: Sequence[str]) -> dict:
    """{'macro_f1', 'balanced_acc'} in percent, 'per_class' (name, precision, recall, f1 in percent, support)
    and 'confusion' (rows: true class, columns: predicted) for the classes `class_names` lists in order."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = list(range(len(class_names)))
    matrix = confusion_matrix(references, predictions, labels=labels)
    precision, recall, f1, support = precision_recall_fscore_support(references, predictions, labels=labels,
                                                                     zero_division=0)
    present = support > 0
    per_class = [{"class": str(name), "precision": round(100 * float(p), 3), "recall": round(100 * float(r), 3),
                  "f1": round(100 * float(f), 3), "support": int(s)}
                 for name, p, r, f, s in zip(class_names, precision, recall, f1, support)]
    return {"macro_f1": 100 * float(f1[present].mean()) if present.any() else 0.0,
            "balanced_acc": 100 * float(recall[present].mean()) if present.any() else 0.0,
            "per_class": per_class, "confusion": matrix.tolist()}


def worst_first(per_class: list) -> list:
    """The classes with validation images, lowest recall first (then lowest F1, then name)."""
    return sorted((c for c in per_class if c["support"]), key=lambda c: (c["recall"], c["f1"], c["class"]))


def per_class_markdown(per_class: list) -> str:
    """The per-class table: every class in its own order up to TABLE_CLASSES, else the lowest recall first."""
    many = len(per_class) > TABLE_CLASSES
    rows = worst_first(per_class)[:TABLE_CLASSES] if many else per_class
    lines = ([f"The {TABLE_CLASSES} classes with the lowest recall of {len(per_class)}:", ""] if many else []) + \
        ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    lines += [f"| {c['class']} | {c['precision']:.1f} | {c['recall']:.1f} | {c['f1']:.1f} | {c['support']} |"
              for c in rows]
    never = [c["class"] for c in per_class if c["support"] and c["recall"] == 0]
    if never:
        lines += ["", f"Never predicted correctly ({len(never)}): {', '.join(never[:20])}"
                  + (" ..." if len(never) > 20 else "") + "."]
    return "\n".join(lines) + "\n"


def most_confused(confusion: list, class_names: Sequence[str], n: int) -> list:
    """[(true class, predicted class, images)] of the `n` largest off-diagonal cells, largest first."""
    matrix = np.asarray(confusion)
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None)[::-1][:n]
    pairs = [np.unravel_index(i, off.shape) for i in order]
    return [(class_names[t], class_names[p], int(off[t, p])) for t, p in pairs if off[t, p] > 0]


def plot_confusion(confusion: list, class_names: Sequence[str], path: Path, title: str) -> None:
    """confusion.png: the matrix normalised by row (each true class's images sum to 1), labelled with the class
    names, up to FULL_MATRIX_CLASSES classes; above that, the most confused pairs as bars."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; chosen here so importing this module sets no global state
    import matplotlib.pyplot as plt

    matrix = np.asarray(confusion, dtype=np.float64)
    names = [str(n) for n in class_names]
    if len(names) <= FULL_MATRIX_CLASSES:
        rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        side = max(4.5, 0.32 * len(names) + 2.5)
        fig, ax = plt.subplots(figsize=(side + 1, side))
        image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
        ticks = range(len(names))
        ax.set_xticks(ticks, names, rotation=90, fontsize=8 if len(names) > 20 else 10)
        ax.set_yticks(ticks, names, fontsize=8 if len(names) > 20 else 10)
        if len(names) <= 15:
            for t in ticks:
                for p in ticks:
                    if matrix[t, p]:
                        ax.text(p, t, f"{rows[t, p]:.2f}", ha="center", va="center", fontsize=8,
                                color="white" if rows[t, p] > 0.5 else "black")
        ax.set(xlabel="predicted class", ylabel="true class", title=title)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class's images")
    else:
        pairs = most_confused(confusion, names, 30)
        fig, ax = plt.subplots(figsize=(9, 0.3 * max(len(pairs), 1) + 1.5))
        ax.barh([f"{t} -> {p}" for t, p, _ in pairs][::-1], [k for _, _, k in pairs][::-1], color="tab:blue")
        ax.set(xlabel="validation images", title=f"{title}: the most confused pairs (true -> predicted), "
               f"{len(names)} classes")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
