"""Array helpers shared by the loaders: resizing, intensity normalisation, slicing.

Resizing goes through ``torch.nn.functional.interpolate`` (imported where used): images with
antialiased (bi)linear or area filtering, binary masks by area-averaging then ``>= 0.5`` (which
keeps nested regions nested and small objects alive), label maps by nearest neighbour.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .base import SegDataset

CT_LIVER_WINDOW = (-200.0, 250.0)
CT_LUNG_WINDOW = (-1000.0, 400.0)


def _interp(x: np.ndarray, size: Sequence[int], mode: str) -> np.ndarray:
    """Interpolate a ``(C, *spatial)`` float array to ``size`` (2D or 3D).

    ``mode``: ``"nearest"``, ``"area"`` (shrinking only) or ``"linear"`` (bilinear with
    antialiasing in 2D; in 3D area-averaging when every axis shrinks, else trilinear).
    """
    import torch
    import torch.nn.functional as F

    size = tuple(int(s) for s in size)
    if tuple(x.shape[1:]) == size:
        return np.array(x, dtype=np.float32)
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None]
    dims = t.ndim - 2
    shrink_all = all(s <= o for s, o in zip(size, t.shape[2:]))
    if mode == "nearest":
        out = F.interpolate(t, size=size, mode="nearest-exact")
    elif mode == "area" or (dims == 3 and shrink_all):
        out = F.interpolate(t, size=size, mode="area")
    elif dims == 2:
        shrink = any(s < o for s, o in zip(size, t.shape[2:]))
        out = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=shrink)
    else:
        out = F.interpolate(t, size=size, mode="trilinear", align_corners=False)
    return out[0].numpy()


def resize_image(img: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize an image ``(C, *spatial)`` with antialiasing; returns float32."""
    return _interp(img, size, "linear")


def resize_mask(mask: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize binary masks ``(K, *spatial)``: mean over the covered area, then ``>= 0.5``."""
    m = mask.astype(np.float32)
    shrink_all = all(s <= o for s, o in zip(size, m.shape[1:]))
    out = _interp(m, size, "area" if shrink_all else "linear")
    return (out >= 0.5).astype(np.uint8)


def resize_labels(labels: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize an integer label map ``(*spatial)`` by nearest neighbour."""
    out = _interp(labels[None].astype(np.float32), size, "nearest")[0]
    return np.rint(out).astype(np.int32)


def zscore(x: np.ndarray, where: np.ndarray | None = None, axes: tuple[int, ...] | None = None,
           clip: float = 5.0) -> np.ndarray:
    """Zero mean, unit variance over ``axes`` (all spatial axes of ``(C, *spatial)`` by default).

    With ``where`` (a boolean mask broadcastable to ``x``) the statistics come from those
    voxels only and everything outside is set to 0 (BraTS: brain voxels only).
    """
    x = x.astype(np.float32)
    axes = axes if axes is not None else tuple(range(1, x.ndim))
    if where is None:
        mean = x.mean(axis=axes, keepdims=True)
        std = x.std(axis=axes, keepdims=True)
        return np.clip((x - mean) / np.maximum(std, 1e-6), -clip, clip).astype(np.float32)
    w = np.broadcast_to(where, x.shape)
    cnt = np.maximum(w.sum(axis=axes, keepdims=True), 1)
    mean = (x * w).sum(axis=axes, keepdims=True) / cnt
    var = (((x - mean) * w) ** 2).sum(axis=axes, keepdims=True) / cnt
    out = np.clip((x - mean) / np.maximum(np.sqrt(var), 1e-6), -clip, clip)
    return np.where(w, out, 0.0).astype(np.float32)


def window(hu: np.ndarray, lo_hi: tuple[float, float]) -> np.ndarray:
    """CT windowing: clip Hounsfield units to ``[lo, hi]`` and scale to ``[0, 1]``."""
    lo, hi = lo_hi
    return ((np.clip(hu, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def evenly_spaced(lo: int, hi: int, k: int) -> np.ndarray:
    """At most ``k`` distinct integer positions spread evenly over ``[lo, hi]``."""
    if hi < lo:
        return np.zeros(0, dtype=np.int64)
    if hi - lo + 1 <= k:
        return np.arange(lo, hi + 1)
    return np.unique(np.rint(np.linspace(lo, hi, k)).astype(np.int64))


def to_slices(ds: SegDataset) -> SegDataset:
    """A 3D dataset as 2D axial slices (first spatial axis); groups keep the volume."""
    if ds.dims != 3:
        return ds
    n, z = len(ds), ds.images.shape[2]
    images = ds.images.transpose(0, 2, 1, 3, 4).reshape(n * z, ds.in_channels, *ds.images.shape[3:])
    masks = ds.masks.transpose(0, 2, 1, 3, 4).reshape(n * z, ds.num_classes, *ds.masks.shape[3:])
    case_ids = [f"{c}/z{k:03d}" for c in ds.case_ids for k in range(z)]
    groups = [g for g in ds.groups for _ in range(z)]
    inst = None if ds.instances is None else ds.instances.reshape(n * z, *ds.instances.shape[2:])
    # every slice stays in its volume's split (a built-in dataset's fixed test set stays fixed)
    splits = {k: (v[:, None] * z + np.arange(z)[None]).reshape(-1) for k, v in ds.splits.items()}
    return SegDataset(name=ds.name, dims=2, images=np.ascontiguousarray(images, np.float32),
                      masks=np.ascontiguousarray(masks, np.uint8), splits=splits,
                      class_names=list(ds.class_names), case_ids=case_ids, groups=groups,
                      instances=inst, meta={**ds.meta, "sliced_from": "3d"})
