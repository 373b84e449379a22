"""Real-format loaders on tiny fixtures written in the published layouts (REFERENCE.md §4).

For each format: a few 16x16 cases load correctly; a truncated file, a missing file and a
mislabelled file raise DataError naming the file; ``on_error="skip"`` skips it with a warning
naming it and loads the rest.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from skipdsl.data import DataWarning, load_dataset
from skipdsl.data import fixtures
from skipdsl.errors import DataError


@pytest.fixture(autouse=True)
def isolated_cache(monkeypatch, tmp_path_factory):
    """Caches go to a temporary folder, never to the user's ~/.cache."""
    monkeypatch.setenv("SKIPDSL_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("SKIPDSL_DATA", raising=False)


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def assert_names(err: pytest.ExceptionInfo, path: Path | str) -> None:
    """The error message names the file and says what to do."""
    msg = str(err.value)
    assert str(path) in msg, msg
    assert "hint:" in msg, msg


def skipped_load(name: str, root: Path, bad: Path | str, **kw):
    """Load with on_error='skip'; the warning must name ``bad``."""
    with pytest.warns(DataWarning) as rec:
        ds = load_dataset(name, root=root, on_error="skip", **kw)
    assert any(str(bad) in str(w.message) for w in rec), [str(w.message) for w in rec]
    assert str(bad) in " ".join(ds.meta["skipped"])
    return ds


def inside_brighter(ds, channel: int = 0) -> bool:
    m = ds.masks[:, 0] > 0
    x = ds.images[:, channel]
    return bool(x[m].mean() > x[~m].mean())


# --------------------------------------------------------------------------- DSB2018


def dsb_case(root: Path, i: int = 1) -> Path:
    return sorted((root / "dsb2018" / "stage1_train").iterdir())[i]


def test_dsb2018_loads(tmp_path):
    files = fixtures.write_dsb2018(tmp_path)
    ds = load_dataset("dsb2018", root=tmp_path)
    assert ds.images.shape == (3, 3, 96, 96) and ds.masks.shape == (3, 1, 96, 96)
    assert ds.class_names == ["nucleus"] and ds.meta["display"] == "rgb"
    assert np.array_equal(ds.instances > 0, ds.masks[:, 0] > 0)
    assert all(1 <= len(np.unique(x)) - 1 <= 2 for x in ds.instances)
    assert inside_brighter(ds)
    assert set(map(str, files)) == set(ds.meta["files"])
    assert ds.case_ids == sorted(p.name for p in (tmp_path / "dsb2018/stage1_train").iterdir())


def test_dsb2018_truncated_image(tmp_path):
    fixtures.write_dsb2018(tmp_path)
    case = dsb_case(tmp_path)
    bad = truncate(case / "images" / f"{case.name}.png")
    with pytest.raises(DataError) as err:
        load_dataset("dsb2018", root=tmp_path)
    assert_names(err, bad)
    assert len(skipped_load("dsb2018", tmp_path, bad)) == 2


def test_dsb2018_missing_image_and_masks(tmp_path):
    fixtures.write_dsb2018(tmp_path)
    case = dsb_case(tmp_path, 0)
    (case / "images" / f"{case.name}.png").unlink()
    with pytest.raises(DataError, match="missing") as err:
        load_dataset("dsb2018", root=tmp_path)
    assert_names(err, case / "images" / f"{case.name}.png")
    case2 = dsb_case(tmp_path, 2)
    for m in (case2 / "masks").iterdir():
        m.unlink()
    with pytest.warns(DataWarning):
        ds = load_dataset("dsb2018", root=tmp_path, on_error="skip")
    assert len(ds) == 1
    assert str(case2 / "masks") in " ".join(ds.meta["skipped"])


def test_dsb2018_mislabelled_mask(tmp_path):
    fixtures.write_dsb2018(tmp_path)
    mask = next((dsb_case(tmp_path) / "masks").iterdir())
    fixtures._png(mask, np.zeros((8, 8), np.uint8), "L")
    with pytest.raises(DataError, match="mislabelled") as err:
        load_dataset("dsb2018", root=tmp_path)
    assert_names(err, mask)


def test_dsb2018_missing_folder(tmp_path):
    (tmp_path / "dsb2018").mkdir()
    with pytest.raises(DataError) as err:
        load_dataset("dsb2018", root=tmp_path)
    assert_names(err, tmp_path / "dsb2018" / "stage1_train")


# --------------------------------------------------------------------------- BraTS 2019


def brats_file(root: Path, i: int, kind: str) -> Path:
    name = f"BraTS19_TST_{i}_1"
    return root / "brats19" / ("HGG" if i % 2 == 0 else "LGG") / name / f"{name}_{kind}.nii.gz"


def test_brats19_loads(tmp_path):
    fixtures.write_brats19(tmp_path)
    ds = load_dataset("brats19", root=tmp_path, slices_per_case=4)
    assert ds.images.shape[1:] == (4, 96, 96) and ds.masks.shape[1:] == (3, 96, 96)
    assert len(ds) == 12 and ds.class_names == ["WT", "TC", "ET"]
    wt, tc, et = ds.masks[:, 0], ds.masks[:, 1], ds.masks[:, 2]
    assert wt.any() and (tc <= wt).all() and (et <= tc).all()
    assert len(set(ds.groups)) == 3 and ds.case_ids[0].startswith("BraTS19_TST_0_1/z")
    for k, idx in ds.splits.items():  # slices of one case stay in one split
        others = np.concatenate([v for j, v in ds.splits.items() if j != k])
        assert not {ds.groups[i] for i in idx} & {ds.groups[i] for i in others}
    assert inside_brighter(ds, 3)
    assert len(ds.meta["files"]) == 15


def test_brats19_truncated_modality(tmp_path):
    fixtures.write_brats19(tmp_path)
    bad = truncate(brats_file(tmp_path, 1, "t1ce"))
    with pytest.raises(DataError) as err:
        load_dataset("brats19", root=tmp_path)
    assert_names(err, bad)
    ds = skipped_load("brats19", tmp_path, bad, slices_per_case=2)
    assert len(set(ds.groups)) == 2


def test_brats19_missing_modality(tmp_path):
    fixtures.write_brats19(tmp_path)
    gone = brats_file(tmp_path, 2, "flair")
    gone.unlink()
    with pytest.raises(DataError, match="missing") as err:
        load_dataset("brats19", root=tmp_path)
    assert_names(err, gone)


def test_brats19_mislabelled_seg(tmp_path):
    import nibabel as nib

    fixtures.write_brats19(tmp_path)
    seg_path = brats_file(tmp_path, 0, "seg")
    seg = np.asanyarray(nib.load(seg_path).dataobj).copy()
    seg[seg == 4] = 3
    seg[0, 0, 0] = 3
    fixtures._nifti(seg_path, seg)
    with pytest.raises(DataError, match=r"relabel 3 -> 4") as err:
        load_dataset("brats19", root=tmp_path)
    assert_names(err, seg_path)


# --------------------------------------------------------------------------- LiTS 2017


def test_lits17_loads(tmp_path):
    fixtures.write_lits17(tmp_path)
    ds = load_dataset("lits17", root=tmp_path, slices_per_case=4)
    assert ds.images.shape == (12, 3, 96, 96) and ds.class_names == ["liver"]
    assert 0 <= ds.images.min() and ds.images.max() <= 1
    assert ds.masks.any() and inside_brighter(ds, 1)
    assert sorted(set(ds.groups)) == ["volume-0", "volume-1", "volume-2"]
    assert len(load_dataset("lits17", root=tmp_path, n=1)) == 8  # all 8 slices of volume-0


def test_lits17_truncated_missing_mislabelled(tmp_path):
    fixtures.write_lits17(tmp_path)
    folder = tmp_path / "lits17"
    bad = truncate(folder / "volume-1.nii", 0.3)
    with pytest.raises(DataError) as err:
        load_dataset("lits17", root=tmp_path)
    assert_names(err, bad)
    (folder / "segmentation-2.nii").unlink()
    with pytest.warns(DataWarning) as rec:
        ds = load_dataset("lits17", root=tmp_path, on_error="skip")
    msgs = " ".join(str(w.message) for w in rec)
    assert str(bad) in msgs and str(folder / "segmentation-2.nii") in msgs
    assert set(ds.groups) == {"volume-0"}
    seg = np.zeros((16, 16, 8), np.int16)
    seg[2, 2, 2] = 7
    fixtures._nifti(folder / "segmentation-0.nii", seg)
    with pytest.raises(DataError, match="unexpected labels") as err:
        load_dataset("lits17", root=tmp_path, n=1)
    assert_names(err, folder / "segmentation-0.nii")


# --------------------------------------------------------------------------- LIDC


@pytest.mark.parametrize("layout", ["pairs", "trees"])
def test_lidc_loads(tmp_path, layout):
    fixtures.write_lidc(tmp_path, n_pairs=6, layout=layout)
    ds = load_dataset("lidc", root=tmp_path)
    assert ds.images.shape == (6, 1, 96, 96) and ds.class_names == ["nodule"]
    assert 0 <= ds.images.min() and ds.images.max() <= 1 and inside_brighter(ds)
    assert sorted(set(ds.groups)) == [f"LIDC-IDRI-{i:04d}" for i in range(3)]
    assert all(len(v) == 2 for v in ds.splits.values())


def test_lidc_errors(tmp_path):
    files = fixtures.write_lidc(tmp_path, n_pairs=4)
    img0, mask1, img2, mask3 = files[0], files[3], files[4], files[7]
    truncate(img0)
    mask1.unlink()
    np.save(mask3, np.zeros((5, 5), bool))
    with pytest.raises(DataError) as err:
        load_dataset("lidc", root=tmp_path)
    assert_names(err, img0)
    with pytest.warns(DataWarning) as rec:
        ds = load_dataset("lidc", root=tmp_path, on_error="skip")
    msgs = " ".join(str(w.message) for w in rec)
    assert str(img0) in msgs and str(mask1) in msgs and str(mask3) in msgs
    assert "mislabelled" in msgs
    assert ds.case_ids == [str(img2.relative_to(tmp_path / "lidc").with_suffix(""))]


# --------------------------------------------------------------------------- LUNA16


def test_luna16_loads_and_aligns_spheres(tmp_path):
    fixtures.write_luna16(tmp_path)
    ds = load_dataset("luna16", root=tmp_path)
    assert ds.dims == 3 and ds.images.shape == (6, 1, 64, 64, 64)
    assert ds.class_names == ["nodule"] and len(set(ds.groups)) == 3
    assert [c.split("/")[1] for c in ds.case_ids] == ["nodule0", "random0"] * 3
    vol = ds.masks[:, 0].reshape(6, -1).sum(axis=1)
    assert ((vol > 80) & (vol < 150)).all(), vol  # 6 mm sphere at 1 mm: ~113 voxels
    for img, m in zip(ds.images[:, 0], ds.masks[:, 0] > 0):  # world -> voxel is right:
        drawn = np.array(np.nonzero(m)).mean(axis=1)  # the sphere drawn from the csv ...
        seen = np.array(np.nonzero(img > 0.4)).mean(axis=1)  # ... sits on the bright nodule
        assert np.abs(drawn - seen).max() < 0.5, (drawn, seen)
    centre = np.array(np.nonzero(ds.masks[0, 0])).mean(axis=1)
    assert np.abs(centre - 31.5).max() <= 9, "nodule patch is centred (8 mm jitter)"
    sl = load_dataset("luna16", root=tmp_path, dims=2)
    assert sl.dims == 2 and sl.images.shape == (6 * 64, 1, 64, 64)


def test_luna16_raw_truncated_and_missing(tmp_path):
    files = fixtures.write_luna16(tmp_path)
    raws = [p for p in files if p.suffix == ".raw"]
    raws[1].unlink()
    with pytest.raises(DataError, match="missing") as err:
        load_dataset("luna16", root=tmp_path)
    assert_names(err, raws[1])
    truncate(raws[0])
    with pytest.raises(DataError, match="truncated") as err:
        load_dataset("luna16", root=tmp_path)
    assert_names(err, raws[0])
    ds = skipped_load("luna16", tmp_path, raws[1])
    assert str(raws[0]) in " ".join(ds.meta["skipped"])
    assert len(set(ds.groups)) == 1


def test_luna16_annotations_problems(tmp_path):
    fixtures.write_luna16(tmp_path)
    csv = tmp_path / "luna16" / "annotations.csv"
    rows = csv.read_text().splitlines()
    csv.write_text("\n".join([rows[0], rows[1].replace(",6.0", ",six")] + rows[2:]))
    with pytest.raises(DataError, match="not a number") as err:
        load_dataset("luna16", root=tmp_path)
    assert_names(err, f"{csv}:2")
    uid, x, y, z, d = rows[2].split(",")
    csv.write_text("\n".join([rows[0], rows[1], f"{uid},{float(x) + 500},{y},{z},{d}"]))
    with pytest.raises(DataError, match="outside the scan") as err:
        load_dataset("luna16", root=tmp_path)
    assert_names(err, csv)
    csv.write_text("seriesuid,x,y\n")
    with pytest.raises(DataError, match="missing columns") as err:
        load_dataset("luna16", root=tmp_path)
    assert_names(err, csv)
    csv.unlink()
    with pytest.raises(DataError, match="missing") as err:
        load_dataset("luna16", root=tmp_path)
    assert_names(err, csv)
