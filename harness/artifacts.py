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


MOSAIC_PAD = 2


def mosaic(dset: Any, num_classes: int) -> Any:
    """[H', W', 3] in [0, 1]: up to MAX_PER_CLASS examples per class (by argmax label), one column
    per class, each image scaled to [0, 1] on its own, MOSAIC_PAD white pixels between tiles."""
    import torch

    classes = dset.y.argmax(1)
    per_class = [torch.nonzero(classes == c).flatten()[:MAX_PER_CLASS] for c in range(num_classes)]
    rows = max(1, max(len(p) for p in per_class))
    height, width = dset.x.shape[2], dset.x.shape[3]
    step_h, step_w = height + MOSAIC_PAD, width + MOSAIC_PAD
    canvas = torch.ones(rows * step_h - MOSAIC_PAD, num_classes * step_w - MOSAIC_PAD, 3)
    for c, idx in enumerate(per_class):
        for r, i in enumerate(idx.tolist()):
            img = dset.x[i].float()
            img = (img - img.min()) / (img.max() - img.min() + 1e-8)
            tile = img[:3].permute(1, 2, 0) if img.shape[0] >= 3 else img[0].unsqueeze(-1).expand(-1, -1, 3)
            canvas[r * step_h : r * step_h + height, c * step_w : c * step_w + width] = tile
    return canvas


def _image_grid(dset: Any, spec: Any, path: Path, plt: Any) -> Path:
    """The :func:`mosaic`, class names on top. One image in one axes: a subplot per image made this
    ~2 s per trial, more than a small trial's distillation."""
    canvas = mosaic(dset, spec.num_classes)
    rows = (canvas.shape[0] + MOSAIC_PAD) // (dset.x.shape[2] + MOSAIC_PAD)
    fig, ax = plt.subplots(figsize=(max(2.0, spec.num_classes * 0.8), max(1.0, rows * 0.8)))
    ax.imshow(canvas.numpy(), interpolation="nearest")
    ax.set_yticks([])
    if spec.classes:
        step = dset.x.shape[3] + MOSAIC_PAD
        ax.set_xticks([c * step + dset.x.shape[3] / 2 for c in range(spec.num_classes)],
                      [str(name)[:8] for name in spec.classes], fontsize=6)
        ax.xaxis.tick_top()
    else:
        ax.set_xticks([])
    for side in ax.spines.values():
        side.set_visible(False)
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
