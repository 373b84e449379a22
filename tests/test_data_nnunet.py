"""The generic nnU-Net v2 raw loader: 2D png/npy, 3D nii.gz (slices or volumes), regions,
normalisation by channel name, and errors that name the file."""
from __future__ import annotations

import json
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

NAME = "Dataset001_Toy"


def folder(root: Path, name: str = NAME) -> Path:
    return root / "nnunet" / name


def edit_json(root: Path, **changes) -> Path:
    path = folder(root) / "dataset.json"
    spec = json.loads(path.read_text())
    spec.update(changes)
    path.write_text(json.dumps(spec))
    return path


def expected_masks(root: Path, case: str) -> np.ndarray:
    """The label PNG of ``case`` as two binary channels, resized like the loader does."""
    from skipdsl.data.arrays import resize_mask
    from skipdsl.data.readers import read_png

    lab = read_png(folder(root) / "labelsTr" / f"{case}.png")
    return resize_mask(np.stack([lab == 1, lab == 2]), (96, 96))


@pytest.mark.parametrize("ending", [".png", ".npy"])
def test_2d_loads(tmp_path, ending):
    fixtures.write_nnunet(tmp_path, ending=ending)
    ds = load_dataset(f"nnunet:{NAME}", root=tmp_path)
    assert ds.name == f"nnunet:{NAME}" and ds.dims == 2
    assert ds.images.shape == (3, 1, 96, 96) and ds.class_names == ["organ", "lesion"]
    assert ds.case_ids == ["case000", "case001", "case002"]
    if ending == ".png":
        assert np.array_equal(ds.masks[1], expected_masks(tmp_path, "case001"))
    assert abs(float(ds.images[0].mean())) < 1e-4, "z-scored per case"
    assert ds.meta["normalisation"] == "MRI: zscore"


def test_rgb_png_is_three_channels(tmp_path):
    fixtures.write_nnunet(tmp_path, rgb=True)
    ds = load_dataset(f"nnunet:{NAME}", root=tmp_path)
    assert ds.in_channels == 3 and ds.meta["display"] == "rgb"


def test_3d_volumes_as_slices_or_volumes(tmp_path):
    fixtures.write_nnunet(tmp_path, ending=".nii.gz", depth=6)
    sl = load_dataset(f"nnunet:{NAME}", root=tmp_path)
    assert sl.dims == 2 and sl.images.shape == (18, 1, 96, 96)
    assert sl.case_ids[:2] == ["case000/z000", "case000/z001"]
    assert sorted(set(sl.groups)) == ["case000", "case001", "case002"]
    few = load_dataset(f"nnunet:{NAME}", root=tmp_path, slices_per_case=3)
    assert len(few) == 9
    vol = load_dataset(f"nnunet:{NAME}", root=tmp_path, dims=3)
    assert vol.dims == 3 and vol.images.shape == (3, 1, 64, 64, 64)
    assert vol.masks[:, 0].any() and (vol.masks[:, 1] <= 1).all()


def test_regions_and_ct_normalisation(tmp_path):
    fixtures.write_nnunet(tmp_path)
    edit_json(tmp_path, labels={"background": 0, "whole": [1, 2], "core": 2},
              channel_names={"0": "CT"})
    ds = load_dataset(f"nnunet:{NAME}", root=tmp_path)
    assert ds.class_names == ["whole", "core"]
    assert (ds.masks[:, 1] <= ds.masks[:, 0]).all() and ds.masks[:, 1].any()
    assert ds.meta["normalisation"] == "CT: ct"
    fg = ds.images[:, 0][ds.masks.any(axis=1)]
    assert abs(float(fg.mean())) < 0.2, "CT: z-scored with the foreground statistics"


def test_n_caps_cases(tmp_path):
    fixtures.write_nnunet(tmp_path, n_cases=5)
    assert len(load_dataset(f"nnunet:{NAME}", root=tmp_path, n=2)) == 2


# --------------------------------------------------------------------------- errors


def test_missing_or_bad_dataset_json(tmp_path):
    fixtures.write_nnunet(tmp_path)
    path = folder(tmp_path) / "dataset.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match="cannot read") as err:
        load_dataset(f"nnunet:{NAME}", root=tmp_path)
    assert str(path) in str(err.value)
    path.write_text(json.dumps({"labels": {"background": 0}}))
    with pytest.raises(DataError, match="channel_names") as err:
        load_dataset(f"nnunet:{NAME}", root=tmp_path)
    assert str(path) in str(err.value)
    path.write_text(json.dumps({"channel_names": {"0": "x"}, "labels": {"a": 1},
                                "file_ending": ".png"}))
    with pytest.raises(DataError, match="background"):
        load_dataset(f"nnunet:{NAME}", root=tmp_path)
    path.unlink()
    with pytest.raises(DataError, match="missing") as err:
        load_dataset(f"nnunet:{NAME}", root=tmp_path)
    assert str(path) in str(err.value)


def test_missing_member_folder(tmp_path):
    fixtures.write_nnunet(tmp_path)
    with pytest.raises(DataError, match=f"available: \\['{NAME}'\\]") as err:
        load_dataset("nnunet:Dataset002_Other", root=tmp_path)
    assert str(folder(tmp_path, "Dataset002_Other")) in str(err.value)


def test_truncated_label_and_missing_files(tmp_path):
    fixtures.write_nnunet(tmp_path, n_cases=4)
    f = folder(tmp_path)
    bad = f / "labelsTr" / "case001.png"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(DataError, match="cannot read") as err:
        load_dataset(f"nnunet:{NAME}", root=tmp_path)
    assert str(bad) in str(err.value) and "hint:" in str(err.value)
    (f / "imagesTr" / "case002_0000.png").unlink()
    (f / "labelsTr" / "case003.png").unlink()
    with pytest.raises(DataError, match="missing") as err:
        load_dataset(f"nnunet:{NAME}", root=tmp_path, n=3)
    with pytest.warns(DataWarning) as rec:
        ds = load_dataset(f"nnunet:{NAME}", root=tmp_path, on_error="skip")
    msgs = " ".join(str(w.message) for w in rec)
    for name in ("labelsTr/case001.png", "imagesTr/case002_0000.png", "labelsTr/case003.png"):
        assert str(f / name) in msgs, name
    assert ds.case_ids == ["case000"]


def test_image_without_label_is_named(tmp_path):
    fixtures.write_nnunet(tmp_path)
    lab = folder(tmp_path) / "labelsTr" / "case002.png"
    lab.unlink()
    with pytest.raises(DataError, match="label file is missing") as err:
        load_dataset(f"nnunet:{NAME}", root=tmp_path)
    assert str(lab) in str(err.value)


def test_undeclared_label_value_and_wrong_shape(tmp_path):
    fixtures.write_nnunet(tmp_path)
    lab = folder(tmp_path) / "labelsTr" / "case000.png"
    fixtures._png(lab, np.full((16, 16), 5, np.uint8))
    with pytest.raises(DataError, match=r"label values \[5\] are not declared") as err:
        load_dataset(f"nnunet:{NAME}", root=tmp_path)
    assert str(lab) in str(err.value)
    fixtures._png(lab, np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match="mislabelled") as err:
        load_dataset(f"nnunet:{NAME}", root=tmp_path)
    assert str(lab) in str(err.value)


def test_channel_count_and_num_training(tmp_path):
    fixtures.write_nnunet(tmp_path)
    path = edit_json(tmp_path, numTraining=5)
    with pytest.raises(DataError, match="numTraining is 5") as err:
        load_dataset(f"nnunet:{NAME}", root=tmp_path)
    assert str(path) in str(err.value)
    with pytest.warns(DataWarning, match="numTraining"):
        assert len(load_dataset(f"nnunet:{NAME}", root=tmp_path, on_error="skip")) == 3
    edit_json(tmp_path, numTraining=3, channel_names={"0": "T1", "1": "T2"})
    with pytest.raises(DataError, match="missing") as err:
        load_dataset(f"nnunet:{NAME}", root=tmp_path)
    assert str(folder(tmp_path) / "imagesTr" / "case000_0001.png") in str(err.value)
