"""Synthetic datasets: determinism, shapes, dtypes, ranges and the difficulties they promise."""
from __future__ import annotations

import numpy as np
import pytest

from skipdsl.data import DATASETS, SegDataset
from skipdsl.data import synthetic as S

SYNTHETIC = ["nuclei2d", "brain_tumor2d", "liver2d", "lung_nodule2d", "lung_nodule3d"]
# name -> (in_channels, class names, spatial shape)
PROMISED = {
    "nuclei2d": (3, ["nucleus"], (96, 96)),
    "brain_tumor2d": (4, ["WT", "TC", "ET"], (96, 96)),
    "liver2d": (3, ["liver"], (96, 96)),
    "lung_nodule2d": (1, ["nodule"], (96, 96)),
    "lung_nodule3d": (1, ["nodule"], (64, 64, 64)),
}
_CACHE: dict[tuple[str, int, int], SegDataset] = {}


def make(name: str, seed: int = 0) -> SegDataset:
    """A small generated dataset (memoised: several tests look at the same one)."""
    n = 16 if name.endswith("3d") else 64
    key = (name, n, seed)
    if key not in _CACHE:
        _CACHE[key] = DATASETS.get(name).build(n, seed)
    return _CACHE[key]


def test_all_synthetic_registered_with_sensible_defaults():
    names = [n for n in DATASETS if DATASETS.get(n).kind == "synthetic"]
    assert sorted(names) == sorted(SYNTHETIC)
    for name in names:
        entry = DATASETS.get(name)
        lo, hi = (32, 64) if entry.dims == 3 else (256, 400)
        assert lo <= entry.default_n <= hi, name
        assert entry.doc, f"{name} needs a docstring saying what it imitates"


@pytest.mark.parametrize("name", SYNTHETIC)
def test_shapes_dtypes_ranges(name):
    ds = make(name)
    chans, classes, spatial = PROMISED[name]
    assert ds.name == name and ds.dims == len(spatial)
    assert ds.images.shape == (len(ds), chans, *spatial) and ds.images.dtype == np.float32
    assert ds.masks.shape == (len(ds), len(classes), *spatial) and ds.masks.dtype == np.uint8
    assert ds.in_channels == chans and ds.num_classes == len(classes)
    assert ds.class_names == classes
    assert np.isfinite(ds.images).all()
    assert set(np.unique(ds.masks)) <= {0, 1}
    assert len(set(ds.case_ids)) == len(ds)
    if "window" in ds.meta["normalisation"]:
        assert ds.images.min() >= 0 and ds.images.max() <= 1
    else:
        assert abs(float(ds.images.mean())) < 0.5 and ds.images.std() > 0.3


@pytest.mark.parametrize("name", SYNTHETIC)
def test_masks_non_trivial_and_empty_where_promised(name):
    ds = make(name)
    per_sample = ds.masks.reshape(len(ds), ds.num_classes, -1).any(axis=2)
    assert per_sample.any(axis=0).all(), "every class appears somewhere"
    fg = ds.masks.mean()
    assert 0.0005 < fg < 0.3
    if name == "nuclei2d":
        assert per_sample.all(), "every microscopy image has nuclei"
    else:
        empty = ~per_sample[:, 0]
        assert 0.1 <= empty.mean() <= 0.7, f"{name}: promised some empty samples"


@pytest.mark.parametrize("name", SYNTHETIC)
def test_same_seed_same_arrays_other_seed_differs(name):
    n = 4 if name.endswith("3d") else 8
    build = DATASETS.get(name).build
    a, b, c = build(n, 3), build(n, 3), build(n, 4)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    for k in a.splits:
        assert np.array_equal(a.splits[k], b.splits[k])
    assert not np.array_equal(a.images, c.images)


@pytest.mark.parametrize("name", SYNTHETIC)
def test_splits_disjoint_and_covering(name):
    ds = make(name)
    parts = [set(ds.splits[k].tolist()) for k in ("train", "val", "test")]
    assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == set(range(len(ds)))


def test_nuclei_are_many_small_touching_instances():
    ds = make("nuclei2d")
    assert ds.instances is not None and ds.instances.shape == (len(ds), 96, 96)
    assert np.array_equal(ds.instances > 0, ds.masks[:, 0] > 0)
    counts = np.array([len(np.unique(x)) - 1 for x in ds.instances])
    assert counts.mean() > 10 and counts.min() >= 3
    sizes = np.bincount(ds.instances[0].ravel())[1:]
    assert np.median(sizes[sizes > 0]) < 200, "nuclei are small"
    a, b = ds.instances[:, :, :-1], ds.instances[:, :, 1:]
    assert ((a != b) & (a > 0) & (b > 0)).any(), "some nuclei touch"


def test_nuclei_stainings_vary():
    ds = make("nuclei2d")
    # bright-on-dark (fluorescence) and dark-on-bright (H&E, brightfield) both occur
    inside = [x[:, m[0] > 0].mean() for x, m in zip(ds.images, ds.masks)]
    assert min(inside) < -0.5 and max(inside) > 0.5


def test_brain_regions_nested_and_four_sequences():
    ds = make("brain_tumor2d")
    wt, tc, et = ds.masks[:, 0], ds.masks[:, 1], ds.masks[:, 2]
    assert (tc <= wt).all() and (et <= tc).all(), "WT ⊃ TC ⊃ ET"
    has_wt, has_et = wt.any(axis=(1, 2)), et.any(axis=(1, 2))
    assert (has_wt & ~has_et).any(), "some tumours without enhancing part"
    assert ds.meta["channels"] == ["T1", "T1ce", "T2", "FLAIR"]
    # background (outside the brain) is exactly 0 after brain-masked z-scoring
    assert (ds.images[:, :, 0, 0] == 0).all()


def test_liver_is_large_and_varies_in_size():
    ds = make("liver2d")
    area = ds.masks[:, 0].sum(axis=(1, 2))
    area = area[area > 0]
    assert area.max() > 800 and area.min() < 300, "large organ, size varies with the slice"
    # neighbour slices differ from the centre slice but are close to it
    diff = np.abs(ds.images[:, 0] - ds.images[:, 1]).mean()
    assert 0 < diff < 0.1


@pytest.mark.parametrize("name", ["lung_nodule2d", "lung_nodule3d"])
def test_nodules_are_small(name):
    ds = make(name)
    from scipy import ndimage

    sizes = []
    for m in ds.masks[:, 0]:
        lab, k = ndimage.label(m)
        sizes += np.bincount(lab.ravel())[1:].tolist()
    assert sizes and np.median(sizes) < (200 if name.endswith("2d") else 1200)


def test_smooth_noise_is_zero_mean_unit_std_even_when_wide():
    rng = np.random.default_rng(0)
    x = S._smooth_noise(rng, 3, (96, 96), 30.0)
    assert np.allclose(x.mean(axis=(1, 2)), 0, atol=1e-4)
    assert np.allclose(x.std(axis=(1, 2)), 1, atol=1e-3)
