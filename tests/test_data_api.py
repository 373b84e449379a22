"""load_dataset / list_datasets / expand_datasets, the .npz cache, splits and SegDataset checks."""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from skipdsl.data import (DATASETS, DataWarning, SegDataset, expand_datasets, list_datasets,
                          load_dataset, make_splits, read_npz, write_npz)
from skipdsl.data import fixtures, loading
from skipdsl.errors import DataError, SpecError

SYNTHETIC = ["brain_tumor2d", "liver2d", "lung_nodule2d", "lung_nodule3d", "nuclei2d"]


@pytest.fixture(autouse=True)
def no_env(monkeypatch, tmp_path):
    """Never touch the user's cache or data folders."""
    monkeypatch.setenv("SKIPDSL_CACHE", str(tmp_path / "env-cache"))
    monkeypatch.delenv("SKIPDSL_DATA", raising=False)


# --------------------------------------------------------------------------- cache


def test_cache_round_trip_and_reuse(tmp_path, monkeypatch):
    ds = load_dataset("nuclei2d", n=12, seed=5, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and "nuclei2d" in files[0].name and "n12-t200-s5" in files[0].name
    assert not list(tmp_path.glob("*.tmp")), "atomic write leaves no temporary file"
    assert ds.meta["source"] == "synthetic" and ds.meta["seed"] == 5

    def boom(n, seed):
        raise AssertionError("should have come from the cache")

    boom.__module__ = "skipdsl.data.synthetic"  # same cache key as the real generator
    entry = DATASETS.get("nuclei2d")
    monkeypatch.setitem(DATASETS._items, "nuclei2d", dataclasses.replace(entry, build=boom))
    again = load_dataset("nuclei2d", n=12, seed=5, cache_dir=tmp_path)
    for field in ("images", "masks", "instances"):
        assert np.array_equal(getattr(ds, field), getattr(again, field))
        assert getattr(ds, field).dtype == getattr(again, field).dtype
    assert again.case_ids == ds.case_ids and again.class_names == ds.class_names
    assert all(np.array_equal(ds.splits[k], again.splits[k]) for k in ds.splits)
    assert again.meta == ds.meta


def test_default_cache_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SKIPDSL_CACHE", str(tmp_path / "c"))
    load_dataset("lung_nodule2d", n=4)
    assert list((tmp_path / "c").glob("lung_nodule2d-*.npz"))
    monkeypatch.delenv("SKIPDSL_CACHE")
    assert str(loading.default_cache_dir()).endswith(os.path.join(".cache", "skipdsl", "data"))


def test_corrupt_cache_is_rebuilt_with_warning(tmp_path):
    ds = load_dataset("liver2d", n=4, cache_dir=tmp_path)
    path = next(tmp_path.glob("*.npz"))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(DataWarning, match="liver2d"):
        again = load_dataset("liver2d", n=4, cache_dir=tmp_path)
    assert np.array_equal(ds.images, again.images)
    assert read_npz(path).images.shape == ds.images.shape


def test_cache_key_changes_with_n_and_seed(tmp_path):
    load_dataset("lung_nodule2d", n=4, seed=0, cache_dir=tmp_path)
    load_dataset("lung_nodule2d", n=4, seed=1, cache_dir=tmp_path)
    load_dataset("lung_nodule2d", n=5, seed=0, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 3


def test_real_dataset_cache_follows_the_files(tmp_path, monkeypatch):
    files = fixtures.write_lidc(tmp_path / "root", n_pairs=3)
    cache = tmp_path / "cache"
    ds = load_dataset("lidc", root=tmp_path / "root", cache_dir=cache)
    assert len(list(cache.glob("lidc-*.npz"))) == 1

    def boom(folder, opts):
        raise AssertionError("should have come from the cache")

    boom.__module__ = "skipdsl.data.real"
    entry = DATASETS.get("lidc")
    monkeypatch.setitem(DATASETS._items, "lidc", dataclasses.replace(entry, build=boom))
    again = load_dataset("lidc", root=tmp_path / "root", cache_dir=cache)
    assert np.array_equal(ds.images, again.images) and again.case_ids == ds.case_ids
    monkeypatch.setitem(DATASETS._items, "lidc", entry)
    np.save(files[0], np.load(files[0])[::-1].copy())  # a changed file is read again
    changed = load_dataset("lidc", root=tmp_path / "root", cache_dir=cache)
    assert not np.array_equal(changed.images, ds.images)
    assert len(list(cache.glob("lidc-*.npz"))) == 2
    off = load_dataset("lidc", root=tmp_path / "root", cache_dir=False, n=1)
    assert len(off) == 1 and len(list(cache.glob("lidc-*.npz"))) == 2


def test_cached_skips_are_warned_again(tmp_path):
    files = fixtures.write_lidc(tmp_path, n_pairs=2)
    files[1].unlink()
    for _ in range(2):
        with pytest.warns(DataWarning, match=str(files[1])):
            ds = load_dataset("lidc", root=tmp_path, on_error="skip", cache_dir=tmp_path / "c")
        assert len(ds) == 1


def test_write_read_npz_keeps_everything(tmp_path):
    ds = SegDataset.create("x", 2, np.random.rand(5, 2, 8, 8), np.zeros((5, 1, 8, 8)), ["a"],
                           [f"c{i}" for i in range(5)], groups=["g0", "g0", "g1", "g2", "g3"],
                           instances=np.arange(5 * 64).reshape(5, 8, 8), seed=3,
                           meta={"files": ["a.png"], "nested": {"k": [1, 2]}})
    back = read_npz(write_npz(ds, tmp_path / "sub" / "x.npz"))
    assert back.groups == ds.groups and back.meta == ds.meta and back.dims == 2
    assert np.array_equal(back.instances, ds.instances)


# --------------------------------------------------------------------------- splits


def test_make_splits_deterministic_disjoint_covering():
    groups = [f"g{i}" for i in range(40)]
    a, b, c = make_splits(groups, 0), make_splits(groups, 0), make_splits(groups, 1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)
    allidx = np.concatenate([a["train"], a["val"], a["test"]])
    assert sorted(allidx.tolist()) == list(range(40))
    assert len(a["val"]) == len(a["test"]) == 6


def test_make_splits_never_cut_a_group():
    groups = [f"vol{i // 10}" for i in range(100)]  # 10 volumes, 10 slices each
    s = make_splits(groups, 7)
    where = {g: {k for k, idx in s.items() if i in idx} for i, g in enumerate(groups)}
    for g in set(groups):
        owners = set().union(*(where[x] for x in where if x == g))
        assert len(owners) == 1, f"{g} spread over {owners}"
    assert all(len(v) for v in s.values())


def test_make_splits_tiny():
    assert [len(v) for v in make_splits(["a", "b"], 0).values()] == [2, 0, 0]
    assert [len(v) for v in make_splits(["a", "b", "c"], 0).values()] == [1, 1, 1]


# --------------------------------------------------------------------------- SegDataset


def test_segdataset_rejects_bad_arrays():
    img, ids = np.zeros((2, 1, 4, 4), np.float32), ["a", "b"]
    with pytest.raises(ValueError, match="mask values"):
        SegDataset.create("x", 2, img, np.full((2, 1, 4, 4), 2), ["c"], ids)
    with pytest.raises(ValueError, match="masks.shape"):
        SegDataset.create("x", 2, img, np.zeros((2, 2, 4, 4)), ["c"], ids)
    with pytest.raises(ValueError, match="images.ndim"):
        SegDataset.create("x", 3, img, np.zeros((2, 1, 4, 4)), ["c"], ids)
    with pytest.raises(ValueError, match="splits"):
        SegDataset("x", 2, img, np.zeros((2, 1, 4, 4), np.uint8),
                   {"train": [0], "val": [0], "test": []}, ["c"], ids)


def test_subset_and_summary():
    ds = load_dataset("brain_tumor2d", n=20, test_n=0)
    train = ds.subset("train")
    assert len(train) == len(ds.splits["train"]) and len(train.splits["val"]) == 0
    assert train.case_ids == [ds.case_ids[i] for i in ds.splits["train"]]
    s = ds.summary()
    assert s["n"] == 20 and set(s["classes"]) == {"WT", "TC", "ET"}
    assert "brain_tumor2d" in repr(ds)


# --------------------------------------------------------------------------- names


def test_list_datasets_synthetic_only_without_root(tmp_path):
    import importlib.util

    packaged = ["mni2d"] if importlib.util.find_spec("nilearn") else []  # files in a wheel
    assert list_datasets() == sorted(SYNTHETIC + packaged)
    assert list_datasets(tmp_path) == sorted(SYNTHETIC + packaged)


def test_list_datasets_finds_real_ones(tmp_path):
    fixtures.write_dsb2018(tmp_path, n_cases=1)
    fixtures.write_lidc(tmp_path, n_pairs=1)
    fixtures.write_nnunet(tmp_path, "Dataset007_Toy", n_cases=1)
    (tmp_path / "nnunet" / "not_a_dataset").mkdir()
    names = list_datasets(tmp_path)
    assert {"dsb2018", "lidc", "nnunet:Dataset007_Toy"} <= set(names)
    assert "brats19" not in names and "nnunet" not in names
    assert set(SYNTHETIC) <= set(names)


def test_list_datasets_uses_env_root(tmp_path, monkeypatch):
    fixtures.write_lidc(tmp_path, n_pairs=1)
    monkeypatch.setenv("SKIPDSL_DATA", str(tmp_path))
    assert "lidc" in list_datasets()


def test_expand_datasets(tmp_path):
    fixtures.write_nnunet(tmp_path, "Dataset007_Toy", n_cases=1)
    assert expand_datasets("all", tmp_path) == list_datasets(tmp_path)
    assert expand_datasets("liver2d, nuclei2d,liver2d") == ["liver2d", "nuclei2d"]
    assert expand_datasets("lung*") == ["lung_nodule2d", "lung_nodule3d"]
    assert expand_datasets(["brats19"]) == ["brats19"]  # known even when absent
    assert expand_datasets("nnunet:Dataset007_Toy", tmp_path) == ["nnunet:Dataset007_Toy"]


def test_expand_unknown_names_say_what_is_valid(tmp_path):
    with pytest.raises(SpecError, match=r"did you mean 'nuclei2d'\?.*valid: .*liver2d"):
        expand_datasets("nucleii2d")
    with pytest.raises(SpecError, match="matches nothing"):
        expand_datasets("kidney*")
    with pytest.raises(SpecError, match="Dataset999_X"):
        expand_datasets("nnunet:Dataset999_X", tmp_path)
    with pytest.raises(SpecError, match="takes no"):
        expand_datasets("liver2d:foo")
    with pytest.raises(SpecError, match="unknown dataset 'nope'"):
        load_dataset("nope")


# --------------------------------------------------------------------------- load options


def test_dims_option(tmp_path):
    sl = load_dataset("lung_nodule3d", n=2, dims=2, cache_dir=tmp_path, test_n=0)
    assert sl.dims == 2 and sl.images.shape == (128, 1, 64, 64)
    assert len(set(sl.groups)) == 2, "slices keep their volume as group"
    vol = load_dataset("lung_nodule3d", n=2, cache_dir=tmp_path)  # 2 + 16 fixed test volumes
    sl = load_dataset("lung_nodule3d", n=2, dims=2, cache_dir=tmp_path)
    assert len(sl.splits["test"]) == 64 * len(vol.splits["test"]) == 64 * 16
    assert all(sl.case_ids[i].startswith("test/") for i in sl.splits["test"])
    assert not (set(sl.splits["train"].tolist()) & set(sl.splits["test"].tolist()))
    with pytest.raises(SpecError, match="2D and cannot be read as 3D"):
        load_dataset("nuclei2d", n=2, dims=3, cache_dir=tmp_path)


def test_real_dataset_needs_a_root(tmp_path):
    with pytest.raises(DataError, match="no root folder"):
        load_dataset("brats19")
    with pytest.raises(DataError, match=str(tmp_path / "lits17")):
        load_dataset("lits17", root=tmp_path)
    with pytest.raises(SpecError, match="needs a member"):
        load_dataset("nnunet", root=tmp_path)


def test_bad_on_error_value(tmp_path):
    fixtures.write_lidc(tmp_path, n_pairs=1)
    with pytest.raises(ValueError, match="on_error"):
        load_dataset("lidc", root=tmp_path, on_error="ignore")


def test_heavy_readers_imported_only_inside_functions():
    """``import skipdsl`` stays light: no module-level import of the medical/plotting libs."""
    import ast
    from pathlib import Path

    import skipdsl.data

    heavy = {"nibabel", "SimpleITK", "matplotlib", "PIL", "torch", "scipy", "pandas"}
    for path in Path(skipdsl.data.__file__).parent.glob("*.py"):
        for node in ast.parse(path.read_text()).body:  # top-level statements only
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""]
                bad = {n.split(".")[0] for n in names} & heavy
                assert not bad, f"{path.name}:{node.lineno} imports {bad} at module level"


# --------------------------------------------------------------------------- fixed test sets


@pytest.mark.parametrize("name,n,small,test_n", [("nuclei2d", 40, 20, 200),
                                                 ("lung_nodule3d", 6, 3, 16)])
def test_builtin_test_set_is_fixed_and_large(name, n, small, test_n):
    """The test split of a built-in dataset is generated apart from the training samples: the
    same cases whatever n (every budget), large enough for a paired test."""
    a = load_dataset(name, n=n, cache_dir=False)
    b = load_dataset(name, n=small, cache_dir=False)
    assert len(a.splits["test"]) == len(b.splits["test"]) == test_n
    assert len(a.splits["train"]) + len(a.splits["val"]) == n
    ta, tb = a.splits["test"], b.splits["test"]
    assert np.array_equal(a.images[ta], b.images[tb]) and np.array_equal(a.masks[ta], b.masks[tb])
    assert [a.case_ids[i] for i in ta] == [b.case_ids[i] for i in tb]
    assert all(a.case_ids[i].startswith("test/") for i in ta)
    # training and test cases are different images
    train = a.images[a.splits["train"]]
    assert not any(np.array_equal(train[0], a.images[i]) for i in ta)
    # another data seed: another test set
    c = load_dataset(name, n=small, seed=1, cache_dir=False)
    assert not np.array_equal(c.images[c.splits["test"]], b.images[tb])


def test_test_n_zero_keeps_one_split_set(tmp_path):
    ds = load_dataset("nuclei2d", n=40, test_n=0, cache_dir=tmp_path)
    assert len(ds) == 40 and 0 < len(ds.splits["test"]) < 10
    again = load_dataset("nuclei2d", n=40, cache_dir=tmp_path)  # another cache entry
    assert len(again) == 240
