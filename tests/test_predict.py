"""``skipdsl predict`` and its image IO: every input format (2D and 3D), padding, sliding
windows, thresholds and argmax, pruning and CGM, and every bad input."""
from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image as PILImage

import skipdsl
from skipdsl import checkpoint
from skipdsl.cli import run
from skipdsl.data.arrays import zscore
from skipdsl.errors import DataError, SpecError
from skipdsl.imageio import read_image, write_mask
from skipdsl.predict import intensity_step, pad_to_multiple, predict_files, predict_logits

TINY = [4, 8, 16, 32, 64]


def _ckpt(folder, name="unet", image_size=(32, 32), **kw):
    torch.manual_seed(0)
    norm = kw.pop("input_normalisation", "z-score per image and channel")
    model = skipdsl.compile(name, widths=TINY, **kw)
    with torch.no_grad():  # a decisive bias: masks hold both classes
        for head in model.heads.children():
            head.bias.fill_(0.05)
    checkpoint.write(folder, checkpoint.payload(model, image_size=image_size,
                                                input_normalisation=norm))
    return skipdsl.load_checkpoint(folder)


@pytest.fixture(scope="module")
def rgb(tmp_path_factory):
    return _ckpt(tmp_path_factory.mktemp("rgb"))


def _expected(ck, arr, step=zscore, **net):
    """The mask the network gives for one (C, *spatial) array, computed directly."""
    x = torch.from_numpy(step(arr.astype(np.float32)))[None]
    with torch.no_grad():
        lg = predict_logits(ck.network(**net), x, multiple=ck.multiple, window=ck.image_size)
    return (torch.sigmoid(lg[0]) > ck.threshold).numpy()


def test_png_folder_through_the_cli(tmp_path, rgb, capsys):
    rng = np.random.default_rng(0)
    src = tmp_path / "in"
    src.mkdir()
    images = {"a.png": rng.integers(0, 256, (40, 50, 3), dtype=np.uint8),    # not a multiple
              "b.png": rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)}    # RGBA
    for name, arr in images.items():
        PILImage.fromarray(arr).save(src / name)
    rc = run(["predict", str(rgb.path.parent), str(src), "-o", str(tmp_path / "out"),
              "--no-progress"])
    assert rc == 0 and "wrote 2 mask(s)" in capsys.readouterr().out
    for name, arr in images.items():
        mask = np.array(PILImage.open(tmp_path / "out" / name))
        assert mask.shape == arr.shape[:2] and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        chw = (arr[..., :3] / 255.0).transpose(2, 0, 1)
        assert np.array_equal(mask == 255, _expected(rgb, chw)[0])


def test_npy_odd_sizes_and_layouts_match_the_network(tmp_path, rgb):
    rng = np.random.default_rng(1)
    arrays = {"first.npy": rng.standard_normal((3, 33, 17)),
              "last.npy": rng.standard_normal((21, 30, 3))}
    for name, a in arrays.items():
        np.save(tmp_path / name, a.astype(np.float32))
    out = predict_files(rgb, [tmp_path / n for n in arrays], tmp_path / "out",
                        intensity="none", progress=False)
    assert [p.name for p in out] == list(arrays)
    first = np.load(tmp_path / "out" / "first.npy")
    assert first.shape == (33, 17) and first.dtype == np.uint8
    assert np.array_equal(first.astype(bool), _expected(rgb, arrays["first.npy"],
                                                          step=lambda a: a)[0])
    assert np.load(tmp_path / "out" / "last.npy").shape == (21, 30)


def test_padding_and_sliding_windows(rgb, monkeypatch):
    x = torch.randn(1, 3, 21, 35)
    xp, crop = pad_to_multiple(x, 16)
    assert xp.shape[2:] == (32, 48) and torch.equal(xp[(slice(None), slice(None)) + crop], x)
    import monai.inferers

    calls = []
    real = monai.inferers.sliding_window_inference

    def spy(inputs, roi, *a, **kw):
        calls.append((tuple(inputs.shape[2:]), tuple(roi)))
        return real(inputs, roi, *a, **kw)

    monkeypatch.setattr(monai.inferers, "sliding_window_inference", spy)
    net = rgb.network()
    big = torch.randn(1, 3, 70, 90)
    out = predict_logits(net, big, multiple=16, window=(32, 32))
    assert out.shape == (1, 1, 70, 90) and calls == [((80, 96), (32, 32))]
    small = predict_logits(net, big[..., :30, :30], multiple=16, window=(32, 32))
    assert small.shape == (1, 1, 30, 30) and len(calls) == 1  # fits one window: no sliding


def test_tiff_2d_and_3d_stacks(tmp_path):
    ck2 = _ckpt(tmp_path / "g2", in_channels=1)
    grey = (np.random.default_rng(2).random((24, 40)) * 65535).astype(np.uint16)
    PILImage.fromarray(grey).save(tmp_path / "g.tif")
    (mask,) = predict_files(ck2, [tmp_path / "g.tif"], tmp_path / "out", progress=False)
    got = np.array(PILImage.open(mask))
    assert got.shape == grey.shape
    assert np.array_equal(got == 255, _expected(ck2, grey[None] / 65535.0)[0])
    ck3 = _ckpt(tmp_path / "g3", in_channels=1, dims=3, image_size=(16, 16, 16))
    stack = [PILImage.fromarray(np.full((20, 18), 40 * k, np.uint8)) for k in range(5)]
    stack[0].save(tmp_path / "v.tiff", save_all=True, append_images=stack[1:])
    (mask,) = predict_files(ck3, [tmp_path / "v.tiff"], tmp_path / "out3", progress=False)
    with PILImage.open(mask) as im:
        assert im.n_frames == 5 and im.size == (18, 20)


def test_nifti_3d_keeps_affine_header_and_voxel_order(tmp_path):
    ck = _ckpt(tmp_path / "v", in_channels=1, dims=3, image_size=(16, 16, 16))
    data = np.random.default_rng(3).standard_normal((20, 12, 9)).astype(np.float32)
    affine = np.array([[0, 0, -2.0, 10], [1.5, 0, 0, -5], [0, -1.0, 0, 3], [0, 0, 0, 1]])
    img = nib.Nifti1Image(data, affine)
    img.header["descrip"] = b"skipdsl test"
    nib.save(img, tmp_path / "vol.nii.gz")
    (mask,) = predict_files(ck, [tmp_path / "vol.nii.gz"], tmp_path / "out", progress=False)
    out = nib.load(mask)
    assert out.shape == data.shape and np.allclose(out.affine, affine)
    assert out.header["descrip"].tobytes().startswith(b"skipdsl test")
    assert out.get_data_dtype() == np.uint8 and set(np.unique(out.get_fdata())) <= {0, 1}
    assert gzip.open(mask).read(4)  # gzipped like its input
    # the mask of a voxel lies on that voxel: a "mask" made from the image itself comes back
    # in the file's own voxel order through the reorientation and its inverse
    read = read_image(tmp_path / "vol.nii.gz", dims=3, channels=1)
    assert read.array.shape == (1, 12, 20, 9)  # RAS+ (9, 20, 12), then (z, y, x)
    write_mask(tmp_path / "same.nii.gz", read.array > 0, read)
    assert np.array_equal(nib.load(tmp_path / "same.nii.gz").get_fdata() == 1, data > 0)


def test_nifti_2d(tmp_path, rgb):
    ck = _ckpt(tmp_path / "g", in_channels=1)
    data = np.random.default_rng(4).standard_normal((30, 20, 1)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.5, 1, 1])), tmp_path / "s.nii")
    (mask,) = predict_files(ck, [tmp_path / "s.nii"], tmp_path / "out", progress=False)
    out = nib.load(mask)
    assert out.shape == (30, 20, 1)
    want = _expected(ck, data[:, :, 0].T[None])[0].T
    assert np.array_equal(out.get_fdata()[:, :, 0] == 1, want)


def test_multi_class_threshold_and_argmax(tmp_path):
    ck = _ckpt(tmp_path / "m", num_classes=3)
    a = np.random.default_rng(5).standard_normal((3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    PILImage.fromarray((np.random.default_rng(5).random((32, 32, 3)) * 255).astype(np.uint8)
                       ).save(tmp_path / "a.png")
    inputs = [tmp_path / "a.npy", tmp_path / "a.png"]
    predict_files(ck, inputs, tmp_path / "t", progress=False)
    assert np.load(tmp_path / "t" / "a.npy").shape == (3, 32, 32)
    bits = np.array(PILImage.open(tmp_path / "t" / "a.png"))
    assert bits.shape == (32, 32) and bits.max() < 8  # bit k = class k
    predict_files(ck, inputs, tmp_path / "x", argmax=True, threshold=0.3, progress=False)
    labels = np.load(tmp_path / "x" / "a.npy")
    assert labels.shape == (32, 32) and set(np.unique(labels)) <= {0, 1, 2, 3}
    with pytest.raises(SpecError, match="--argmax needs 2 or more classes"):
        predict_files(_ckpt(tmp_path / "one"), inputs, tmp_path / "y", argmax=True,
                      progress=False)


def test_prune_and_cgm_options(tmp_path, capsys):
    ck = _ckpt(tmp_path / "ds", name="unetsharp", deep_supervision=True, cgm=True)
    a = np.random.default_rng(6).standard_normal((3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    for flags, net in [(["--prune", "2"], {"prune": 2}), (["--no-cgm"], {"cgm": False}),
                       (["--prune", "1", "--cgm"], {"prune": 1, "cgm": True})]:
        rc = run(["predict", str(ck.path), str(tmp_path / "a.npy"), "-o",
                  str(tmp_path / "o.npy"), "--no-progress", *flags])
        assert rc == 0
        assert np.array_equal(np.load(tmp_path / "o.npy").astype(bool),
                              _expected(ck, a, **net)[0])
    plain = _ckpt(tmp_path / "plain", name="unetsharp")
    rc = run(["predict", str(plain.path), str(tmp_path / "a.npy"), "-o", str(tmp_path / "p"),
              "--cgm", "--no-progress"])
    assert rc == 2 and "no CGM weights" in capsys.readouterr().err


def test_intensity_steps():
    x = np.random.default_rng(7).normal(5, 3, (2, 8, 8)).astype(np.float32)
    assert intensity_step("auto", "z-score per image and channel")[0] == "zscore"
    name, fn = intensity_step("auto", "CT window (-200.0, 250.0) HU -> [0, 1]")
    assert name == "window:-200.0,250.0" and fn(np.array([-300.0, 25.0, 400.0])).tolist() == \
        [0.0, 0.5, 1.0]
    assert intensity_step("auto", "z-score per channel over brain voxels")[0] == "zscore-nonzero"
    assert intensity_step("auto", None)[0] == "none"
    assert np.allclose(intensity_step("zscore")[1](x).mean(axis=(1, 2)), 0, atol=1e-5)
    with pytest.raises(SpecError, match="unknown intensity step 'window:3,1'"):
        intensity_step("window:3,1")


def test_bad_inputs_name_the_file_and_write_nothing(tmp_path, rgb, capsys):
    ck = str(rgb.path)
    out = tmp_path / "out"

    def fails(args, pattern):
        assert run(["predict", ck, *map(str, args), "-o", str(out), "--no-progress"]) == 2
        msg = capsys.readouterr().err
        assert pattern in msg and "hint:" in msg, msg

    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    fails([tmp_path / "broken.png"], "broken.png: cannot read the image")
    PILImage.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "grey.png")
    fails([tmp_path / "grey.png"], "grey.png: the image has 1 channel(s)")
    np.save(tmp_path / "five.npy", np.zeros((5, 32, 32), np.float32))
    fails([tmp_path / "five.npy"], "five.npy: the image has 5 channel(s)")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    fails([tmp_path / "obj.npy"], "obj.npy: cannot read the array")
    (tmp_path / "bad.nii.gz").write_bytes(b"not a nifti")
    fails([tmp_path / "bad.nii.gz"], "bad.nii.gz: cannot read the NIfTI file")
    (tmp_path / "x.jpg").write_bytes(b"")
    fails([tmp_path / "x.jpg"], "x.jpg: unsupported file type")
    fails([tmp_path / "nope.png"], "nope.png: input is missing")
    assert not out.exists()  # every failure above came before any mask was written
    # a truncated checkpoint, a mask that would overwrite its image
    (tmp_path / "cut.pt").write_bytes(rgb.path.read_bytes()[:100])
    assert run(["predict", str(tmp_path / "cut.pt"), str(tmp_path / "grey.png"), "-o",
                str(out)]) == 2
    assert "cut.pt: not a readable checkpoint" in capsys.readouterr().err
    np.save(tmp_path / "ok.npy", np.zeros((3, 32, 32), np.float32))
    assert run(["predict", ck, str(tmp_path / "ok.npy"), "-o", str(tmp_path)]) == 2
    assert "would overwrite its image" in capsys.readouterr().err
    with pytest.raises(DataError, match="a npy input gets a npy mask, not png"):
        predict_files(rgb, [tmp_path / "ok.npy"], tmp_path / "m.png", progress=False)
