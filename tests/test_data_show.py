"""show(): samples with mask overlays drawn to a PNG, for synthetic and real datasets."""
from __future__ import annotations

import numpy as np
import pytest

from skipdsl.data import fixtures, load_dataset, show
from skipdsl.data.show import pick_samples


@pytest.fixture(autouse=True)
def isolated_cache(monkeypatch, tmp_path_factory):
    """Caches go to a temporary folder, never to the user's ~/.cache."""
    monkeypatch.setenv("SKIPDSL_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("SKIPDSL_DATA", raising=False)


def read_png(path):
    import matplotlib.image as mpimg

    return mpimg.imread(path)


@pytest.mark.parametrize("name", ["brain_tumor2d", "lung_nodule3d"])
def test_show_dataset_object(tmp_path, name):
    ds = load_dataset(name, n=6 if name.endswith("3d") else 12, cache_dir=tmp_path)
    out = show(ds, tmp_path / "figs" / f"{name}.png", n=3)
    img = read_png(out)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
    assert img[..., :3].std() > 0.05, "not a blank figure"


def test_show_by_name_from_root(tmp_path):
    fixtures.write_dsb2018(tmp_path)
    out = show("dsb2018", tmp_path / "dsb.png", n=8, root=tmp_path)
    assert read_png(out).shape[1] > 300  # asked for 8, the dataset has 3: draws 3


def test_pick_samples_prefers_foreground_and_shows_one_empty(tmp_path):
    ds = load_dataset("liver2d", n=20, cache_dir=tmp_path)
    picks = pick_samples(ds, 4)
    present = ds.masks[picks].reshape(4, -1).any(axis=1)
    assert len(set(picks)) == 4 and present.sum() == 3 and not present[-1]
    assert picks == pick_samples(ds, 4)
    assert np.all(np.diff(picks[:3]) > 0)
