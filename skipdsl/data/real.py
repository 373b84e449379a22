"""Loaders for the real datasets, in their published layouts (docs/bench.md, Datasets: DSB2018
stage1_train, BraTS 2019, LiTS 2017, LIDC-IDRI image/mask pairs, LUNA16 .mhd/.raw).

Each loader reads ``ROOT/<folder>``, one case at a time through a :class:`CaseGuard` (a bad
case raises a DataError naming its file, or is skipped with a warning), resizes to the
benchmark size (96x96 in 2D, 64^3 in 3D) and normalises like the matching synthetic dataset.
``opts.n`` caps the number of cases read (sorted by name), not the number of samples.
"""
from __future__ import annotations

import re
import zlib
from pathlib import Path

import numpy as np

from .arrays import (CT_LIVER_WINDOW, CT_LUNG_WINDOW, evenly_spaced, resize_image, resize_labels,
                     resize_mask, window, zscore)
from .base import SIZE_2D, SIZE_3D, LoadOptions, SegDataset, data_error, real, stack_samples
from .readers import nifti_to_zyx, read_csv, read_mhd, read_nifti, read_npy, read_png, require

S2 = (SIZE_2D, SIZE_2D)


def _cases(paths: list[Path], opts: LoadOptions) -> list[Path]:
    return sorted(paths)[: opts.n] if opts.n else sorted(paths)


def _as_float01(arr: np.ndarray) -> np.ndarray:
    """Integer image -> float32 in [0, 1] by its dtype's range; floats are kept."""
    if arr.dtype.kind in "ui":
        return arr.astype(np.float32) / np.iinfo(arr.dtype).max
    return arr.astype(np.float32)


def _binary(m: np.ndarray) -> np.ndarray:
    """A mask as bool: bool kept, floats > 0.5, 8-bit > 127, other integers > 0."""
    if m.dtype == bool:
        return m
    if m.dtype.kind == "f":
        return m > 0.5
    return m > 127 if m.dtype == np.uint8 and m.max() > 1 else m > 0


def _meta(folder: Path, files: list[str], guard, **extra) -> dict:
    return {"source": str(folder), "files": files, "skipped": guard.skipped, **extra}


# --------------------------------------------------------------------------- DSB2018


def _dsb_case(case: Path, files: list[str]):
    """One Kaggle DSB2018 case -> (image (3, 96, 96), mask (1, 96, 96), instances)."""
    img_path = case / "images" / f"{case.name}.png"
    img = read_png(img_path)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise data_error(img_path, f"expected an RGB(A) or grey image, found shape {img.shape}",
                         "replace it with the original Kaggle PNG")
    rgb = _as_float01(img[..., :3]).transpose(2, 0, 1)
    mask_paths = sorted((case / "masks").glob("*.png"))
    if not mask_paths:
        raise data_error(case / "masks", "no mask PNGs for this case",
                         "each stage1_train case needs masks/*.png (one nucleus per file)")
    inst = np.zeros(rgb.shape[1:], np.int32)
    for j, mp in enumerate(mask_paths, start=1):
        m = read_png(mp)
        m = m[..., 0] if m.ndim == 3 else m
        if m.shape != inst.shape:
            raise data_error(mp, f"mask is {m.shape[0]}x{m.shape[1]} but its image "
                             f"{img_path.name} is {inst.shape[0]}x{inst.shape[1]}",
                             "mislabelled: this mask belongs to another image; move or delete it")
        inst[_binary(m)] = j
    files += [str(img_path), *map(str, mask_paths)]
    inst = resize_labels(inst, S2)
    return zscore(resize_image(rgb, S2)), (inst > 0)[None].astype(np.uint8), inst


@real("dsb2018", dims=2, folder="dsb2018", probe="dsb2018/stage1_train")
def dsb2018(folder: Path, opts: LoadOptions) -> SegDataset:
    """ROOT/dsb2018/stage1_train/<id>/{images/<id>.png, masks/*.png} (Kaggle DSB2018).

    RGBA -> RGB, semantic mask = union of the nucleus masks (> 127), instances kept, all
    resized to 96x96, z-scored per image and channel.
    """
    train = folder / "stage1_train"
    require(train, "stage1_train folder")
    guard, files = opts.guard(), []
    samples, inst, ids = [], [], []
    for case in _cases([p for p in train.iterdir() if p.is_dir()], opts):
        out = guard(_dsb_case, case, files)
        if out is not None:
            samples.append(out[:2])
            inst.append(out[2])
            ids.append(case.name)
    return stack_samples("dsb2018", 2, samples, ["nucleus"], ids, ids, opts,
                         _meta(train, files, guard, normalisation="z-score per image and channel",
                               display="rgb"), instances=inst)


# --------------------------------------------------------------------------- BraTS 2019

BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")
BRATS_REGIONS = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}


def _nii(case: Path, stem: str) -> Path:
    """``case/stem.nii.gz`` or ``case/stem.nii``, whichever exists (``.nii.gz`` if neither)."""
    for ext in (".nii.gz", ".nii"):
        if (case / f"{stem}{ext}").exists():
            return case / f"{stem}{ext}"
    return case / f"{stem}.nii.gz"


def _brats_case(case: Path, opts: LoadOptions, files: list[str]):
    """One BraTS case -> list of (z, image (4, 96, 96), masks (3, 96, 96))."""
    paths = [_nii(case, f"{case.name}_{m}") for m in (*BRATS_MODALITIES, "seg")]
    vols = [nifti_to_zyx(read_nifti(p)) for p in paths]
    for p, v in zip(paths, vols):
        if v.shape != vols[-1].shape:
            raise data_error(p, f"shape {v.shape} differs from the segmentation's "
                             f"{vols[-1].shape}", "mislabelled: all files of a case must "
                             "share one grid; re-export the case")
    seg = vols[-1].astype(np.int16)
    bad = sorted(set(np.unique(seg).tolist()) - {0, 1, 2, 4})
    if bad:
        raise data_error(paths[-1], f"unexpected labels {bad}; BraTS 2019 uses 0, 1, 2, 4",
                         "mislabelled: if 3 marks enhancing tumour (older releases), relabel "
                         "3 -> 4; otherwise fix or remove the file")
    img = np.stack([v.astype(np.float32) for v in vols[:4]])
    brain = (img > 0).any(axis=0)
    zs_brain = np.flatnonzero(brain.any(axis=(1, 2)))
    if not len(zs_brain):
        raise data_error(paths[0], "the volume is empty (no brain voxels)", "re-export the case")
    img = zscore(img, where=brain[None], axes=(1, 2, 3))
    regions = np.stack([np.isin(seg, v) for v in BRATS_REGIONS.values()]).astype(np.uint8)
    files += map(str, paths)
    return [(int(z), resize_image(img[:, z], S2), resize_mask(regions[:, z], S2))
            for z in evenly_spaced(zs_brain[0], zs_brain[-1], opts.slices_per_case)]


@real("brats19", dims=2, folder="brats19")
def brats19(folder: Path, opts: LoadOptions) -> SegDataset:
    """ROOT/brats19/{HGG,LGG}/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz (BraTS 2019).

    Channels T1, T1ce, T2, FLAIR z-scored over brain voxels per volume; masks WT, TC, ET;
    ``slices_per_case`` axial slices evenly spaced through the brain, resized to 96x96.
    """
    markers = [p for pat in ("*_seg.nii*", "*_flair.nii*") for p in folder.rglob(pat)]
    guard, files = opts.guard(), []
    samples, ids, groups = [], [], []
    for case in _cases(list({p.parent for p in markers}), opts):
        for z, img, msk in guard(_brats_case, case, opts, files) or []:
            samples.append((img, msk))
            ids.append(f"{case.name}/z{z:03d}")
            groups.append(case.name)
    return stack_samples("brats19", 2, samples, list(BRATS_REGIONS), ids, groups, opts,
                         _meta(folder, files, guard, channels=["T1", "T1ce", "T2", "FLAIR"],
                               normalisation="z-score per channel over brain voxels of the "
                               "volume", display_channel=3))


# --------------------------------------------------------------------------- LiTS 2017


def _lits_number(path: Path) -> int:
    return int(re.search(r"-(\d+)\.nii", path.name).group(1))  # type: ignore[union-attr]


def _lits_case(vol_path: Path, seg_path: Path, opts: LoadOptions, files: list[str]):
    """One LiTS volume -> list of (z, image (3, 96, 96) = z-1, z, z+1, liver mask)."""
    vol = nifti_to_zyx(read_nifti(vol_path))
    seg = nifti_to_zyx(read_nifti(seg_path))
    if vol.shape != seg.shape:
        raise data_error(seg_path, f"shape {seg.shape} differs from {vol_path.name} {vol.shape}",
                         "mislabelled: pair each volume-N with its own segmentation-N")
    seg = np.rint(seg).astype(np.int16)
    bad = sorted(set(np.unique(seg).tolist()) - {0, 1, 2})
    if bad:
        raise data_error(seg_path, f"unexpected labels {bad}; LiTS uses 0, 1 (liver), 2 (tumour)",
                         "mislabelled: fix or remove the file")
    files += [str(vol_path), str(seg_path)]
    last = vol.shape[0] - 1
    out = []
    for z in evenly_spaced(0, last, opts.slices_per_case):
        stack = vol[[max(z - 1, 0), z, min(z + 1, last)]].astype(np.float32)
        out.append((int(z), resize_image(window(stack, CT_LIVER_WINDOW), S2),
                    resize_mask((seg[z] >= 1)[None], S2)))
    return out


@real("lits17", dims=2, folder="lits17")
def lits17(folder: Path, opts: LoadOptions) -> SegDataset:
    """ROOT/lits17/**/volume-N.nii + segmentation-N.nii (LiTS 2017, ``.nii.gz`` also read).

    Channels: slices z-1, z, z+1 windowed to HU -200..250 -> 0..1; mask: liver (label >= 1,
    tumour included); ``slices_per_case`` slices evenly spaced through each volume.
    """
    vols = [p for p in folder.rglob("volume-*.nii*") if re.search(r"-\d+\.nii", p.name)]
    segs = {_lits_number(p): p for p in folder.rglob("segmentation-*.nii*")
            if re.search(r"-\d+\.nii", p.name)}
    guard, files = opts.guard(), []
    samples, ids, groups = [], [], []
    for vp in sorted(vols, key=_lits_number)[: opts.n or None]:
        num = _lits_number(vp)
        sp = segs.get(num, vp.with_name(vp.name.replace("volume-", "segmentation-")))
        for z, img, msk in guard(_lits_case, vp, sp, opts, files) or []:
            samples.append((img, msk))
            ids.append(f"volume-{num}/z{z:03d}")
            groups.append(f"volume-{num}")
    return stack_samples("lits17", 2, samples, ["liver"], ids, groups, opts,
                         _meta(folder, files, guard, channels=["z-1", "z", "z+1"],
                               normalisation=f"CT window {CT_LIVER_WINDOW} HU -> [0, 1]",
                               display_channel=1))


# --------------------------------------------------------------------------- LIDC-IDRI 2D

_IMAGE_DIRS = ("image", "images", "Image", "Images")
_MASK_DIRS = ("mask", "masks", "Mask", "Masks")


def _is_mask(path: Path, folder: Path) -> bool:
    rel = path.relative_to(folder)
    return (path.stem.endswith("_mask") or "_MA" in path.stem
            or any(part in _MASK_DIRS for part in rel.parts[:-1]))


def _lidc_mask_for(image: Path, folder: Path) -> Path:
    """Where the mask of ``image`` should be (see :func:`lidc`)."""
    stem = image.stem
    for tail in ("_image", "_img"):
        if stem.endswith(tail):
            return image.with_name(stem[: -len(tail)] + "_mask.npy")
    parts = list(image.relative_to(folder).parts)
    for i, part in enumerate(parts[:-1]):
        if part in _IMAGE_DIRS:
            twin = next((m for m in _MASK_DIRS if (folder.joinpath(*parts[:i], m)).is_dir()),
                        "mask")
            parts[i] = twin
            parts[-1] = parts[-1].replace("_NI", "_MA")
            return folder.joinpath(*parts)
    return image.with_name(stem + "_mask.npy")


def _lidc_group(image: Path, folder: Path) -> str:
    """The patient a slice belongs to: its sub-folder, else its name up to the first '_'."""
    parts = [p for p in image.relative_to(folder).parts[:-1] if p not in _IMAGE_DIRS]
    return parts[-1] if parts else image.stem.split("_")[0]


def _lidc_pair(img_path: Path, mask_path: Path, files: list[str]):
    img = np.squeeze(read_npy(img_path))
    msk = np.squeeze(read_npy(require(mask_path, "mask (the image's pair)")))
    if img.ndim != 2:
        raise data_error(img_path, f"expected one 2D slice, found shape {img.shape}",
                         "save one slice per .npy")
    if msk.shape != img.shape:
        raise data_error(mask_path, f"mask shape {msk.shape} differs from image {img.shape}",
                         "mislabelled: pair each image with its own mask")
    hu = img.min() < -200 or img.max() > 200
    x = window(img, CT_LUNG_WINDOW) if hu else (img - img.min()) / max(np.ptp(img), 1e-6)
    files += [str(img_path), str(mask_path)]
    return (resize_image(x[None].astype(np.float32), S2),
            resize_mask(_binary(msk)[None], S2)), hu


@real("lidc", dims=2, folder="lidc")
def lidc(folder: Path, opts: LoadOptions) -> SegDataset:
    """ROOT/lidc: per-slice image/mask ``.npy`` pairs (LIDC-IDRI, pylidc consensus masks).

    Pairs are ``X_image.npy``/``X_img.npy`` + ``X_mask.npy`` side by side, or parallel
    ``Image/...`` and ``Mask/...`` trees with ``_NI`` <-> ``_MA`` in the file names (the
    LIDC-IDRI-Preprocessing layout), or ``X.npy`` + ``X_mask.npy``. Hounsfield images are
    windowed to -1000..400 -> 0..1; already-scaled ones are min-max scaled.
    """
    images = [p for p in folder.rglob("*.npy") if not _is_mask(p, folder)]
    guard, files = opts.guard(), []
    samples, ids, groups, hu_flags = [], [], [], []
    for img_path in _cases(images, opts):
        out = guard(_lidc_pair, img_path, _lidc_mask_for(img_path, folder), files)
        if out is not None:
            samples.append(out[0])
            hu_flags.append(out[1])
            ids.append(str(img_path.relative_to(folder).with_suffix("")))
            groups.append(_lidc_group(img_path, folder))
    norm = f"CT window {CT_LUNG_WINDOW} HU -> [0, 1] (min-max for non-HU slices)"
    return stack_samples("lidc", 2, samples, ["nodule"], ids, groups, opts,
                         _meta(folder, files, guard, normalisation=norm))


# --------------------------------------------------------------------------- LUNA16

LUNA_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
LUNA_SPACING_MM = 1.0


def _luna_annotations(folder: Path) -> tuple[Path, dict[str, list[np.ndarray]]]:
    """``annotations.csv`` as uid -> [array(x, y, z, diameter_mm)], world millimetres."""
    csv_path = next((p for p in (folder / "annotations.csv", folder / "CSVFILES" /
                                 "annotations.csv") if p.exists()), folder / "annotations.csv")
    rows = read_csv(csv_path, LUNA_COLUMNS)
    out: dict[str, list[np.ndarray]] = {}
    for line, row in enumerate(rows, start=2):
        try:
            vals = np.array([float(row[c]) for c in LUNA_COLUMNS[1:]])
        except (TypeError, ValueError):
            raise data_error(f"{csv_path}:{line}", f"not a number in {row}",
                             "coordX, coordY, coordZ and diameter_mm must be numbers") from None
        out.setdefault(row["seriesuid"], []).append(vals)
    return csv_path, out


def _world_to_voxel(world: np.ndarray, origin, spacing, direction) -> np.ndarray:
    """World mm (x, y, z) -> continuous voxel index (x, y, z); works on (..., 3) arrays."""
    return ((world - origin) @ direction) / spacing


def _luna_patch(arr, origin, spacing, direction, center, nodules, size=SIZE_3D):
    """A ``size``^3 patch at 1 mm around world ``center``: (HU (z, y, x), sphere mask)."""
    from scipy import ndimage

    off = (np.arange(size) - (size - 1) / 2) * LUNA_SPACING_MM
    zz, yy, xx = np.meshgrid(center[2] + off, center[1] + off, center[0] + off, indexing="ij")
    world = np.stack([xx, yy, zz], axis=-1)
    idx = _world_to_voxel(world, origin, spacing, direction)  # (..., x/y/z)
    coords = [idx[..., 2], idx[..., 1], idx[..., 0]]
    hu = ndimage.map_coordinates(arr, coords, order=1, cval=-1024.0, output=np.float32)
    mask = np.zeros(hu.shape, bool)
    for x, y, z, d in nodules:
        mask |= ((xx - x) ** 2 + (yy - y) ** 2 + (zz - z) ** 2) <= (d / 2) ** 2
    return hu, mask


def _luna_case(mhd: Path, nodules: list[np.ndarray], csv_path: Path, opts: LoadOptions,
               files: list[str]):
    """One LUNA16 scan -> list of (id, image (1, 64^3), mask (1, 64^3)): one patch per
    nodule (centre jittered by up to 8 mm) plus one random patch."""
    arr, origin, spacing, direction = read_mhd(mhd)
    shape_xyz = np.array(arr.shape[::-1])
    for x, y, z, d in nodules:
        v = _world_to_voxel(np.array([x, y, z]), origin, spacing, direction)
        if np.any(v < -0.5) or np.any(v > shape_xyz - 0.5):
            raise data_error(csv_path, f"nodule of {mhd.stem} at world ({x}, {y}, {z}) mm lies "
                             f"outside the scan (voxel {np.round(v, 1).tolist()}, size "
                             f"{shape_xyz.tolist()})", "mislabelled: check seriesuid and the "
                             "coordinates (world mm, x y z)")
    rng = np.random.default_rng([opts.seed, zlib.crc32(mhd.stem.encode())])
    centres = [(f"nodule{i}", nod[:3] + rng.uniform(-8, 8, 3)) for i, nod in enumerate(nodules)]
    vox = rng.uniform(0.2, 0.8, 3) * (shape_xyz - 1)
    centres.append(("random0", origin + direction @ (vox * spacing)))
    files.append(str(mhd))
    out = []
    for tag, c in centres:
        hu, mask = _luna_patch(arr, origin, spacing, direction, c, nodules)
        out.append((tag, window(hu, CT_LUNG_WINDOW)[None], mask[None].astype(np.uint8)))
    return out


@real("luna16", dims=3, folder="luna16")
def luna16(folder: Path, opts: LoadOptions) -> SegDataset:
    """ROOT/luna16/subsetK/<uid>.mhd (+ .raw) and ROOT/luna16/annotations.csv (LUNA16).

    64 mm cubes resampled to 64^3 at 1 mm (HU -1000..400 -> 0..1), one around each annotated
    nodule and one at random per scan; masks are spheres of ``diameter_mm`` drawn in world
    space. Annotations for scans that are not present (other subsets) are ignored.
    """
    csv_path, ann = _luna_annotations(folder)
    scans = list(folder.glob("subset*/*.mhd")) + list(folder.glob("*.mhd"))
    guard, files = opts.guard(), [str(csv_path)]
    samples, ids, groups = [], [], []
    for mhd in _cases(scans, opts):
        for tag, img, msk in guard(_luna_case, mhd, ann.get(mhd.stem, []), csv_path, opts,
                                   files) or []:
            samples.append((img, msk))
            ids.append(f"{mhd.stem}/{tag}")
            groups.append(mhd.stem)
    return stack_samples("luna16", 3, samples, ["nodule"], ids, groups, opts,
                         _meta(folder, files, guard, spacing_mm=LUNA_SPACING_MM,
                               normalisation=f"CT window {CT_LUNG_WINDOW} HU -> [0, 1]"))
