"""``mni2d``: white matter on axial slices of a real MRI, from files a public package ships.

The MNI ICBM152 2009a nonlinear symmetric template (Fonov et al., "Unbiased average
age-appropriate atlases for pediatric studies", NeuroImage 2011; Fonov et al., "Unbiased
nonlinear average age-appropriate brain templates from birth to adulthood", NeuroImage 2009):
a T1-weighted MRI at 1 mm with its white-matter probability map, as the nilearn wheel ships
them (``nilearn/datasets/data/mni_icbm152_{t1,wm}_tal_nlin_sym_09a_converted.nii.gz``).
Nothing is downloaded; the files are read with nibabel, nilearn is not imported.

- **Task**: white matter (probability >= 0.5), one binary channel, on axial slices.
- **Images**: the T1 (brain-extracted, as shipped) averaged over 2x2 voxels in plane (2 mm),
  cropped to 96x96 around the brain; intensities scaled to [0, 1]. Every axial slice that
  holds brain (1 mm apart, 155) is a case; slices without white matter are empty cases.
- **Split by slab, with gaps**: the slices are cut into slabs of :data:`SLAB` consecutive
  slices; slabs go in turn to train, test, train, val (:data:`PATTERN`), and the
  :data:`GAP` slices at every border between slabs of different splits are dropped, so no
  test slice is within ``2 * GAP + 1`` mm of a training or validation slice. The split is fixed
  (it does not depend on the seed), as the built-in datasets' test sets are.

**One subject.** Every case comes from the same head (an average of 152 adults, hence
smooth): the cases are correlated, so p-values computed over them are optimistic and a
difference found here says nothing about other subjects. It is real anatomy with real
labels, not a population.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from .base import SegDataset, packaged

SLAB = 15
GAP = 2
PATTERN = ("train", "test", "train", "val")
SIZE = 96
FILES = {"t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
         "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"}
INSTALL = "pip install 'skipdsl[anatomy]' (nilearn, whose wheel ships the MNI152 template)"


def nilearn_data() -> Path | None:
    """The folder of nilearn's bundled data files, or None when nilearn is not installed."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    return folder if all((folder / f).is_file() for f in FILES.values()) else None


def _pool2(a: np.ndarray) -> np.ndarray:
    """Mean over 2x2 blocks of the first two axes (x, y) of an (x, y, z) volume."""
    x, y = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    a = a[:x, :y]
    return a.reshape(x // 2, 2, y // 2, 2, -1).mean(axis=(1, 3))


def _crop(a: np.ndarray, center: tuple[int, int]) -> np.ndarray:
    """A SIZE x SIZE window of an (x, y, z) volume around ``center``, zero-padded."""
    out = np.zeros((SIZE, SIZE, a.shape[2]), dtype=a.dtype)
    x0, y0 = center[0] - SIZE // 2, center[1] - SIZE // 2
    xs, ys = max(0, x0), max(0, y0)
    xe, ye = min(a.shape[0], x0 + SIZE), min(a.shape[1], y0 + SIZE)
    out[xs - x0:xe - x0, ys - y0:ye - y0] = a[xs:xe, ys:ye]
    return out


def slab_splits(z: np.ndarray) -> dict[str, np.ndarray]:
    """Split ordered slice positions ``z`` into slabs (:data:`SLAB`, :data:`PATTERN`), dropping
    :data:`GAP` slices on each side of a border between two different splits; index arrays."""
    rel = z - z.min()
    slab = rel // SLAB
    split = np.array([PATTERN[s % len(PATTERN)] for s in slab])
    keep = np.ones(len(z), dtype=bool)
    for i in range(len(z)):
        lo, hi = max(0, i - GAP), min(len(z), i + GAP + 1)
        if split[i] != "train" and np.any(split[lo:hi] != split[i]):
            keep[i] = False  # a val/test slice near another split's slab
        if split[i] == "train" and np.any(split[lo:hi] != "train"):
            keep[i] = False  # a training slice near a val/test slab
    return {k: np.flatnonzero(keep & (split == k)).astype(np.int64)
            for k in ("train", "val", "test")}


@packaged("mni2d", dims=2, package="nilearn", install=INSTALL)
def mni2d() -> SegDataset:
    """White matter on axial slices of the MNI152 2009a T1 (real MRI, one subject: the cases
    are correlated, p-values optimistic); see :mod:`skipdsl.data.anatomy`."""
    import nibabel as nib

    folder = nilearn_data()
    if folder is None:
        from ..errors import DataError

        raise DataError(f"mni2d needs the MNI152 template files that nilearn ships; {INSTALL}")
    t1 = np.asarray(nib.load(folder / FILES["t1"]).dataobj, dtype=np.float32)
    wm = np.asarray(nib.load(folder / FILES["wm"]).dataobj, dtype=np.float32)
    head = t1 > 0.02 * t1.max()
    xs, ys = np.nonzero(head.any(axis=2))
    center = ((xs.min() + xs.max()) // 4, (ys.min() + ys.max()) // 4)  # in the pooled grid
    t1p = _crop(_pool2(t1), center) / max(float(t1.max()), 1e-6)
    wmp = _crop(_pool2(wm / max(float(wm.max()), 1e-6)), center) >= 0.5
    zs = np.flatnonzero(head.any(axis=(0, 1)))
    # (x, y, z) RAS -> images (z, 1, y, x) with anterior up and the subject's right on the left
    images = np.transpose(t1p[:, ::-1, zs], (2, 1, 0))[:, None]
    masks = np.transpose(wmp[:, ::-1, zs], (2, 1, 0))[:, None].astype(np.uint8)
    parts = slab_splits(zs)
    keep = np.sort(np.concatenate(list(parts.values())))  # the gap slices are left out
    new = {int(i): k for k, i in enumerate(keep)}
    splits = {k: np.array([new[int(i)] for i in v], dtype=np.int64) for k, v in parts.items()}
    zs = zs[keep]
    return SegDataset(
        name="mni2d", dims=2, images=np.ascontiguousarray(images[keep], dtype=np.float32),
        masks=np.ascontiguousarray(masks[keep]), splits=splits, class_names=["white_matter"],
        case_ids=[f"mni152/z{int(z):03d}" for z in zs],
        groups=[f"slab{int(z - zs.min()) // SLAB}" for z in zs],
        meta={"source": "MNI ICBM152 2009a nonlinear symmetric template (nilearn wheel)",
              "files": [str(folder / f) for f in FILES.values()],
              "normalisation": "T1 / its maximum -> [0, 1]", "subjects": 1,
              "spacing": (2.0, 2.0), "slice_spacing_mm": 1.0,
              "split": f"slabs of {SLAB} slices {'/'.join(PATTERN)}, {GAP}-slice gaps"})
