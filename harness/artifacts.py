"""Views of a distilled set for the MLflow UI: an image grid, a label heatmap and, for datasets
that can render their inputs (``DatasetSpec.decode``, e.g. text), the examples as text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MAX_PER_CLASS = 10
MAX_LABEL_ROWS = 200
MAX_TEXT_EXAMPLES = 500


def write_figures(dset: Any, spec: Any, out: Path, ctx: Any = None) -> list[Path]:
    """Write ``images.png`` (image data), ``examples.txt`` (when the dataset can decode its inputs)
    and ``labels.png``; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if spec.modality == "image" and len(spec.input_shape) == 3:
        written.append(_image_grid(dset, spec, out / "images.png", plt))
    if spec.decode is not None:
        written.append(_examples_text(dset, spec, out / "examples.txt", ctx))
    rows = dset.y[:MAX_LABEL_ROWS].numpy()
    fig, ax = plt.subplots(figsize=(max(4, rows.shape[1] * 0.4), max(2, min(rows.shape[0], 60) * 0.15)))
    im = ax.imshow(rows, aspect="auto", cmap="viridis")
    ax.set_xlabel("class")
    ax.set_ylabel("distilled example")
    ax.set_title("labels" + (f" (first {MAX_LABEL_ROWS})" if dset.n > MAX_LABEL_ROWS else ""))
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(out / "labels.png", dpi=80)
    plt.close(fig)
    written.append(out / "labels.png")
    return written


def _image_grid(dset: Any, spec: Any, path: Path, plt: Any) -> Path:
    """Up to MAX_PER_CLASS examples per class (by argmax label), one column per class."""
    import torch

    classes = dset.y.argmax(1)
    cols = spec.num_classes
    per_class = [torch.nonzero(classes == c).flatten()[:MAX_PER_CLASS] for c in range(cols)]
    rows = max(1, max(len(p) for p in per_class))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.8, rows * 0.8), squeeze=False)
    for c, idx in enumerate(per_class):
        for r in range(rows):
            ax = axes[r][c]
            ax.axis("off")
            if r < len(idx):
                img = dset.x[idx[r]]
                img = (img - img.min()) / (img.max() - img.min() + 1e-8)
                if img.shape[0] == 1:
                    ax.imshow(img[0].numpy(), cmap="gray")
                else:
                    ax.imshow(img[:3].permute(1, 2, 0).numpy())
        if spec.classes:
            axes[0][c].set_title(str(spec.classes[c])[:8], fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _examples_text(dset: Any, spec: Any, path: Path, ctx: Any) -> Path:
    """One line per example: its label (top classes with their weights) and the decoded input."""
    texts = spec.decode(dset.x[:MAX_TEXT_EXAMPLES], ctx)
    names = spec.classes or [str(c) for c in range(spec.num_classes)]
    lines = []
    for i, text in enumerate(texts):
        weights, top = dset.y[i].topk(min(2, spec.num_classes))
        label = ", ".join(f"{names[int(c)]} {float(w):.2f}" for w, c in zip(weights, top) if float(w) > 0)
        lines.append(f"[{i}] ({label}) {text}")
    if dset.n > MAX_TEXT_EXAMPLES:
        lines.append(f"... {dset.n - MAX_TEXT_EXAMPLES} more examples not shown")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
