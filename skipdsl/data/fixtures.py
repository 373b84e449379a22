"""Tiny datasets written in the real published layouts, for tests and for trying the loaders.

Each ``write_*`` function creates ``root/<folder>`` with a few small cases (16x16 slices by
default) whose masks are bright blobs in the images, and returns the paths it wrote. They use
the same libraries as the readers (Pillow, nibabel, SimpleITK), imported where used.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _blob(shape: tuple[int, ...], rng: np.random.Generator, radius: float) -> np.ndarray:
    """A boolean ball of ``radius`` at a random place inside ``shape``."""
    centre = [rng.uniform(radius, s - radius) if s > 2 * radius else s / 2 for s in shape]
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, centre)) <= radius**2


def _png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)
    return path


def _nifti(path: Path, arr: np.ndarray) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(arr, np.diag([1.0, 1.0, 2.0, 1.0])).to_filename(str(path))
    return path


def write_dsb2018(root: str | Path, n_cases: int = 3, size: int = 16, seed: int = 0) -> list[Path]:
    """``root/dsb2018/stage1_train/<id>/{images/<id>.png (RGBA), masks/*.png}``."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_cases):
        cid = f"{i:04x}" + "ab" * 4
        case = Path(root) / "dsb2018" / "stage1_train" / cid
        rgba = np.zeros((size, size, 4), np.uint8)
        rgba[..., :3] = rng.integers(0, 40, (size, size, 3))
        rgba[..., 3] = 255
        for j in range(2):
            m = _blob((size, size), rng, size / 6)
            rgba[m, :3] = 220
            out.append(_png(case / "masks" / f"m{j}.png", (m * 255).astype(np.uint8), "L"))
        out.append(_png(case / "images" / f"{cid}.png", rgba, "RGBA"))
    return out


def write_brats19(root: str | Path, n_cases: int = 3, size: int = 16, depth: int = 8,
                  seed: int = 0) -> list[Path]:
    """``root/brats19/{HGG,LGG}/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` (labels 0,1,2,4)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_cases):
        name = f"BraTS19_TST_{i}_1"
        case = Path(root) / "brats19" / ("HGG" if i % 2 == 0 else "LGG") / name
        brain = _blob((size, size, depth), rng, size * 0.45)
        seg = np.zeros(brain.shape, np.int16)
        seg[_blob(brain.shape, rng, 3.5) & brain] = 2
        seg[_blob(brain.shape, rng, 2.5) & (seg == 2)] = 1
        seg[(seg == 1) & _blob(brain.shape, rng, 2.5)] = 4
        for k, mod in enumerate(("t1", "t1ce", "t2", "flair")):
            vol = (brain * (100 + 10 * k) + (seg > 0) * 80).astype(np.float32)
            vol += brain * rng.normal(0, 5, brain.shape).astype(np.float32)
            out.append(_nifti(case / f"{name}_{mod}.nii.gz", vol))
        out.append(_nifti(case / f"{name}_seg.nii.gz", seg))
    return out


def write_lits17(root: str | Path, n_cases: int = 3, size: int = 16, depth: int = 8,
                 seed: int = 0) -> list[Path]:
    """``root/lits17/volume-N.nii`` + ``segmentation-N.nii`` (HU; labels 0, 1, 2)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_cases):
        liver = _blob((size, size, depth), rng, size * 0.3)
        seg = liver.astype(np.int16)
        seg[_blob(liver.shape, rng, 1.5) & liver] = 2
        vol = np.where(liver, 110, -80).astype(np.int16) + rng.integers(-10, 10, liver.shape,
                                                                       dtype=np.int16)
        out.append(_nifti(Path(root) / "lits17" / f"volume-{i}.nii", vol))
        out.append(_nifti(Path(root) / "lits17" / f"segmentation-{i}.nii", seg))
    return out


def write_lidc(root: str | Path, n_pairs: int = 3, size: int = 16, seed: int = 0,
               layout: str = "pairs") -> list[Path]:
    """``root/lidc`` per-slice ``.npy`` pairs in HU.

    ``layout="pairs"``: ``LIDC-IDRI-000k/sliceJ_image.npy`` + ``sliceJ_mask.npy``;
    ``layout="trees"``: ``Image/LIDC-IDRI-000k/000k_NI000_sliceJ.npy`` + ``Mask/.../_MA...``.
    """
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_pairs):
        mask = _blob((size, size), rng, size / 6)
        img = np.where(mask, 30.0, -850.0) + rng.normal(0, 20, mask.shape)
        pid = f"LIDC-IDRI-{i // 2:04d}"
        if layout == "pairs":
            base = Path(root) / "lidc" / pid
            pair = (base / f"slice{i}_image.npy", base / f"slice{i}_mask.npy")
        else:
            stem = f"{i // 2:04d}_{{}}000_slice{i:03d}.npy"
            pair = (Path(root) / "lidc" / "Image" / pid / stem.format("NI"),
                    Path(root) / "lidc" / "Mask" / pid / stem.format("MA"))
        for path, arr in zip(pair, (img.astype(np.float32), mask)):
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, arr)
            out.append(path)
    return out


def write_luna16(root: str | Path, n_cases: int = 3, size: int = 24, seed: int = 0) -> list[Path]:
    """``root/luna16/subset0/<uid>.mhd`` + ``.raw`` and ``annotations.csv``.

    Scans are ``size``^3 voxels of (0.8, 0.8, 2.0) mm with one nodule each (and one annotation
    of a scan that is not there, as in a partial download).
    """
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    spacing = np.array([0.8, 0.8, 2.0])
    folder = Path(root) / "luna16"
    (folder / "subset0").mkdir(parents=True, exist_ok=True)
    rows, out = ["seriesuid,coordX,coordY,coordZ,diameter_mm"], []
    for i in range(n_cases):
        uid = f"1.3.6.1.4.1.14519.5.2.1.6279.6001.{100000 + i}"
        origin = rng.uniform(-200, -100, 3)
        vox = rng.uniform(size * 0.3, size * 0.7, 3)  # x, y, z
        world = origin + vox * spacing
        d = 6.0
        zz, yy, xx = np.meshgrid(*(np.arange(size) * spacing[k] + origin[k] for k in (2, 1, 0)),
                                 indexing="ij")
        ball = (xx - world[0]) ** 2 + (yy - world[1]) ** 2 + (zz - world[2]) ** 2 <= (d / 2) ** 2
        arr = np.where(ball, 40, -850).astype(np.int16)
        img = sitk.GetImageFromArray(arr)
        img.SetOrigin(tuple(origin))
        img.SetSpacing(tuple(spacing))
        path = folder / "subset0" / f"{uid}.mhd"
        sitk.WriteImage(img, str(path))
        out += [path, path.with_suffix(".raw")]
        rows.append(f"{uid},{world[0]:.4f},{world[1]:.4f},{world[2]:.4f},{d}")
    rows.append("1.3.6.1.4.1.14519.5.2.1.6279.6001.999999,0,0,0,5.0")
    (folder / "annotations.csv").write_text("\n".join(rows) + "\n")
    return [*out, folder / "annotations.csv"]


def write_nnunet(root: str | Path, name: str = "Dataset001_Toy", n_cases: int = 3,
                 size: int = 16, depth: int = 6, ending: str = ".png", rgb: bool = False,
                 seed: int = 0) -> list[Path]:
    """``root/nnunet/<name>/{dataset.json, imagesTr, labelsTr}`` with labels 0, 1, 2.

    ``ending`` ``.png``/``.npy`` gives 2D cases, ``.nii.gz`` 3D volumes of ``depth`` slices;
    ``rgb`` writes one RGB PNG per case (channels R, G, B), else one grey "MRI" channel.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "nnunet" / name
    three_d = ending in (".nii.gz", ".nii")
    shape = (size, size, depth) if three_d else (size, size)
    out = []
    for i in range(n_cases):
        lab = np.zeros(shape, np.uint8)
        lab[_blob(shape, rng, size / 4)] = 1
        lab[_blob(shape, rng, size / 6) & (lab == 1)] = 2
        img = (lab * 60 + rng.integers(0, 30, shape)).astype(np.uint8)
        ip, lp = folder / "imagesTr" / f"case{i:03d}_0000{ending}", folder / "labelsTr" / \
            f"case{i:03d}{ending}"
        if ending == ".png":
            _png(ip, np.repeat(img[..., None], 3, 2) if rgb else img)
            _png(lp, lab)
        elif ending == ".npy":
            for p, a in ((ip, img), (lp, lab)):
                p.parent.mkdir(parents=True, exist_ok=True)
                np.save(p, a)
        else:
            _nifti(ip, img.astype(np.float32))
            _nifti(lp, lab)
        out += [ip, lp]
    spec = {"channel_names": {"0": "R", "1": "G", "2": "B"} if rgb else {"0": "MRI"},
            "labels": {"background": 0, "organ": 1, "lesion": 2},
            "numTraining": n_cases, "file_ending": ending, "name": name}
    (folder / "dataset.json").write_text(json.dumps(spec, indent=2))
    return [*out, folder / "dataset.json"]
