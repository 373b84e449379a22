"""Dataset realism (KID): same generator closer than different generators; report and picture
written; the extractor named; nothing downloaded."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from skipdsl.data import realism as R

N = 24


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data-cache"))


def test_parse_set():
    assert R.parse_set("nuclei2d") == ("nuclei2d", None, 0)
    assert R.parse_set("liver2d:test@3") == ("liver2d", "test", 3)
    assert R.parse_set("nnunet:Dataset004_Hippocampus@1") == ("nnunet:Dataset004_Hippocampus",
                                                              None, 1)


def test_to_uint8_rgb_channels_and_3d():
    rng = np.random.default_rng(0)
    for shape in [(3, 1, 8, 8), (3, 2, 8, 8), (3, 4, 8, 8), (3, 1, 6, 8, 8)]:
        out = R.to_uint8_rgb(rng.normal(size=shape) * 100 - 50)
        assert out.shape == (3, 3, 8, 8) and out.dtype == np.uint8 and out.max() == 255


def test_same_generator_scores_lower_kid_than_another(cache_dir, tmp_path):
    r = R.compare("nuclei2d", ["nuclei2d@1", "liver2d"], tmp_path, n=N, cache_dir=cache_dir)
    same, other = (row["kid"] for row in r["rows"])
    assert same < other and other > 10 * max(abs(same), 1e-3)
    md = r["markdown"].read_text()
    assert "fixed random-feature extractor" in md and "KID computed by" in md
    assert "| nuclei2d | liver2d |" in md and "realism.png" in md
    assert r["picture"].stat().st_size > 1000


def test_encoder_of_a_skipdsl_checkpoint(tmp_path):
    import skipdsl
    from skipdsl.checkpoint import payload, write_file

    widths = [4, 8, 16, 32, 64]
    model = skipdsl.compile("unet", widths=widths, in_channels=3, num_classes=1)
    path = write_file(tmp_path / "model.pt", payload(model))
    imgs = np.random.default_rng(0).integers(0, 255, (5, 3, 32, 32), dtype=np.uint8)
    f = R.extract(imgs, f"checkpoint:{path}")
    assert f.shape == (5, 2 * sum(widths)) and torch.isfinite(f).all()
    with pytest.raises(ValueError, match="unknown feature extractor"):
        R.extract(imgs, "inceptionv3")


def test_inception_needs_a_local_file(tmp_path):
    imgs = np.zeros((4, 3, 16, 16), dtype=np.uint8)
    with pytest.raises((FileNotFoundError, ValueError), match="nothing is downloaded|does not "
                       "import"):
        R.kid(imgs, imgs, f"inception:{tmp_path / 'missing.pth'}")


def test_estimator_matches_torch_fidelity(monkeypatch):
    pytest.importorskip("torch_fidelity", exc_type=ImportError)
    from torch_fidelity.metric_kid import kid_features_to_metric

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(40, 16, generator=g).double(), torch.randn(40, 16, generator=g).double() + .3
    ref = kid_features_to_metric(a, b, verbose=False, **{**R.KID_DEFAULTS, "kid_subset_size": 20})
    monkeypatch.setattr(R, "_fidelity", lambda: (None, "forced"))
    mine = R.kid_from_features(a, b)
    assert mine["kid"] == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-9)
    assert mine["kid_std"] == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-6)
