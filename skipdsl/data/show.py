"""Draw samples of a dataset with their mask overlays to a PNG.

Uses matplotlib's object API (``Figure`` rendered by Agg), never pyplot, so it neither needs
a display nor changes the backend of an interactive session.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import SegDataset

CLASS_COLOURS = ["#ff3b30", "#ffcc00", "#30d158", "#0a84ff", "#bf5af2", "#ff9f0a", "#64d2ff"]


def pick_samples(ds: SegDataset, n: int) -> list[int]:
    """``n`` deterministic sample indices: spread over samples with foreground, plus one empty
    sample (when there are empty ones and ``n >= 3``) to show what "empty" looks like."""
    present = ds.masks.reshape(len(ds), -1).any(axis=1)
    full, empty = np.flatnonzero(present), np.flatnonzero(~present)
    n_empty = 1 if (len(empty) and n >= 3) else 0
    k = min(n - n_empty, len(full))
    picks = list(full[np.linspace(0, len(full) - 1, k).astype(int)]) if k else []
    picks += list(empty[: n - len(picks)])
    return [int(i) for i in picks[:n]]


def _plane(ds: SegDataset, i: int) -> tuple[np.ndarray, np.ndarray, str]:
    """A 2D view of sample ``i``: (image channels, masks, label); 3D -> slice with most mask."""
    img, msk = ds.images[i], ds.masks[i]
    if ds.dims == 2:
        return img, msk, ds.case_ids[i]
    area = msk.reshape(msk.shape[0], msk.shape[1], -1).sum(axis=(0, 2))
    z = int(area.argmax()) if area.any() else msk.shape[1] // 2
    return img[:, z], msk[:, z], f"{ds.case_ids[i]} z={z}"


def _display(ds: SegDataset, img: np.ndarray) -> tuple[np.ndarray, str | None]:
    """What to draw for an image ``(C, H, W)``: RGB for microscopy, else one grey channel."""
    if ds.meta.get("display") == "rgb" and img.shape[0] == 3:
        lo, hi = np.percentile(img, [1, 99], axis=(1, 2), keepdims=True)
        rgb = np.clip((img - lo) / np.maximum(hi - lo, 1e-6), 0, 1)
        return rgb.transpose(1, 2, 0), None
    ch = int(ds.meta.get("display_channel", 0))
    x = img[min(ch, img.shape[0] - 1)]
    lo, hi = np.percentile(x, [0.5, 99.5])
    return np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1), "gray"


def _overlay(ax, masks: np.ndarray) -> None:
    """Filled translucent mask per class with a crisp contour, in class order."""
    from matplotlib.colors import to_rgba

    for k, m in enumerate(masks):
        if not m.any():
            continue
        colour = CLASS_COLOURS[k % len(CLASS_COLOURS)]
        rgba = np.zeros((*m.shape, 4))
        rgba[m > 0] = to_rgba(colour, 0.35)
        ax.imshow(rgba, interpolation="nearest")
        ax.contour(m, levels=[0.5], colors=[colour], linewidths=0.9)


def show(name_or_dataset: str | SegDataset, out_path: str | Path, n: int = 4,
         root: str | Path | None = None, **load_kwargs) -> Path:
    """Draw ``n`` samples (top: image, bottom: image with masks) to ``out_path`` (PNG).

    ``name_or_dataset`` is a dataset or a name for :func:`skipdsl.data.load_dataset` (with
    ``root`` and ``load_kwargs``). Returns the path written.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    if isinstance(name_or_dataset, SegDataset):
        ds = name_or_dataset
    else:
        from .loading import load_dataset

        ds = load_dataset(name_or_dataset, root=root, **load_kwargs)
    picks = pick_samples(ds, n)
    cols = max(len(picks), 1)
    fig = Figure(figsize=(2.3 * cols, 5.0))
    axes = fig.subplots(2, cols, squeeze=False)
    for col, i in enumerate(picks):
        img, msk, label = _plane(ds, i)
        shown, cmap = _display(ds, img)
        for row in (0, 1):
            ax = axes[row, col]
            ax.imshow(shown, cmap=cmap, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        _overlay(axes[1, col], msk)
        axes[0, col].set_title(label, fontsize=7)
        present = [c for c, m in zip(ds.class_names, msk) if m.any()]
        axes[1, col].set_xlabel(", ".join(present) or "(empty)", fontsize=7)
    handles = [Rectangle((0, 0), 1, 1, color=CLASS_COLOURS[k % len(CLASS_COLOURS)])
               for k in range(ds.num_classes)]
    fig.legend(handles, ds.class_names, loc="lower center", ncol=ds.num_classes, fontsize=8,
               frameon=False)
    fig.suptitle(f"{ds.name}: {len(ds)} samples, {ds.in_channels} channels, "
                 f"{'x'.join(map(str, ds.spatial_shape))}", fontsize=9)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.88, bottom=0.1, wspace=0.06, hspace=0.12)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out
