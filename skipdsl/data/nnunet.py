"""The generic path for any user dataset: nnU-Net v2 raw folders.

``ROOT/nnunet/DatasetXXX_Name/`` holds ``dataset.json`` (``channel_names``, ``labels``,
``numTraining``, ``file_ending``), ``imagesTr/<case>_<CCCC><ending>`` (one file per channel;
an RGB PNG counts as three) and ``labelsTr/<case><ending>``. 2D files (png, npy) give 2D
samples; 3D volumes (nii.gz, nii, mha, nrrd, npy) give ``slices_per_case`` axial slices
unless ``dims=3`` is asked for, which resizes whole volumes to 64^3.

Labels become one binary channel per non-background entry of ``labels``; a region (a list
of values, nnU-Net's region-based training) becomes the union of its values. Intensities are
normalised per channel the way nnU-Net does by channel name: ``CT`` -> clip to the dataset's
foreground 0.5-99.5 percentiles and z-score with the foreground mean/std; ``noNorm``;
``rescale_to_0_1``; ``rgb_to_0_1`` (/255); anything else -> z-score per case.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from .arrays import evenly_spaced, resize_image, resize_mask
from .base import SIZE_2D, SIZE_3D, LoadOptions, SegDataset, data_error, real, stack_samples
from .readers import read_image_file, read_json, require

MEMBER_RE = re.compile(r"^Dataset\d{3}_.+")


def members(folder: Path) -> list[str]:
    """The ``DatasetXXX_Name`` folders under ``ROOT/nnunet``."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and MEMBER_RE.match(p.name))


# --------------------------------------------------------------------------- dataset.json


def _spec(path: Path) -> dict[str, Any]:
    """Check and normalise ``dataset.json``: channels, classes (name, values), ending."""
    raw = read_json(path)
    chans = raw.get("channel_names", raw.get("modality"))
    labels = raw.get("labels")
    ending = raw.get("file_ending")
    todo = ("dataset.json needs channel_names {\"0\": \"CT\"}, labels {\"background\": 0, ...}, "
            "numTraining and file_ending (nnU-Net v2 format)")
    if not isinstance(chans, dict) or not chans or not isinstance(labels, dict) \
            or not isinstance(ending, str):
        raise data_error(path, "missing or malformed channel_names, labels or file_ending", todo)
    try:
        channels = [str(chans[k]) for k in sorted(chans, key=int)]
        classes = [(str(name), [int(v)] if isinstance(v, (int, float, str)) else
                    [int(x) for x in v]) for name, v in labels.items()]
    except (TypeError, ValueError) as err:
        raise data_error(path, f"cannot parse channel_names/labels ({err})", todo) from None
    if not any(vals == [0] for _, vals in classes):
        raise data_error(path, "labels has no background entry with value 0", todo)
    fg = [(name, vals) for name, vals in classes if vals != [0]]
    declared = sorted({v for _, vals in classes for v in vals})
    return {"channels": channels, "classes": fg, "values": declared, "ending": ending,
            "num_training": raw.get("numTraining"), "name": raw.get("name")}


# --------------------------------------------------------------------------- one case


def _channels_of(arr: np.ndarray, path: Path) -> np.ndarray:
    """A file's array as ``(c, *spatial)``: RGB(A) PNG -> 3 channels, else 1."""
    if path.name.lower().endswith((".png", ".bmp", ".tif", ".tiff")) and arr.ndim == 3:
        return np.moveaxis(arr[..., :3], -1, 0)
    return arr[None]


def _squeeze_spatial(arr: np.ndarray) -> np.ndarray:
    """Drop singleton spatial axes of ``(c, *spatial)`` (a 1-slice volume is 2D)."""
    keep = [0] + [i for i in range(1, arr.ndim) if arr.shape[i] != 1]
    return arr.reshape([arr.shape[i] for i in keep]) if len(keep) >= 3 else arr


def _read_case(folder: Path, case: str, spec: dict, files: list[str]):
    """Raw image ``(C, *spatial)`` float32 and integer label map of one case."""
    end, want = spec["ending"], len(spec["channels"])
    parts, c = [], 0
    while sum(p.shape[0] for p in parts) < want:
        path = require(folder / "imagesTr" / f"{case}_{c:04d}{end}", "image channel file")
        parts.append(_channels_of(read_image_file(path), path))
        files.append(str(path))
        c += 1
    first = folder / "imagesTr" / f"{case}_0000{end}"
    if len({p.shape[1:] for p in parts}) > 1 or sum(p.shape[0] for p in parts) != want:
        raise data_error(first, f"channel files give shapes {[p.shape for p in parts]} but "
                         f"dataset.json declares {want} channels {spec['channels']}",
                         "mislabelled: one file per channel, all on the same grid")
    image = _squeeze_spatial(np.concatenate(parts).astype(np.float32))
    lab_path = require(folder / "labelsTr" / f"{case}{end}", "label file")
    lab = read_image_file(lab_path)
    lab = lab[..., 0] if lab_path.suffix.lower() == ".png" and lab.ndim == 3 else lab
    lab = _squeeze_spatial(lab[None])[0]
    if lab.shape != image.shape[1:]:
        raise data_error(lab_path, f"label shape {lab.shape} differs from image "
                         f"{image.shape[1:]}", "mislabelled: the label must be on the image's "
                         "grid")
    lab = np.rint(lab).astype(np.int32)
    bad = sorted(set(np.unique(lab).tolist()) - set(spec["values"]))
    if bad:
        raise data_error(lab_path, f"label values {bad} are not declared in dataset.json "
                         f"(declared {spec['values']})", "mislabelled: fix the label file or "
                         "add the values to labels in dataset.json")
    files.append(str(lab_path))
    return image, lab


def _samples(image: np.ndarray, lab: np.ndarray, spec: dict, opts: LoadOptions):
    """Resized ``(tag, raw image, masks)`` samples of one case: 2D as is, 3D slices or volume."""
    masks = np.stack([np.isin(lab, vals) for _, vals in spec["classes"]]).astype(np.uint8)
    if lab.ndim == 2:
        return [("", resize_image(image, (SIZE_2D,) * 2), resize_mask(masks, (SIZE_2D,) * 2))]
    if opts.dims == 3:
        return [("", resize_image(image, (SIZE_3D,) * 3), resize_mask(masks, (SIZE_3D,) * 3))]
    return [(f"/z{z:03d}", resize_image(image[:, z], (SIZE_2D,) * 2),
             resize_mask(masks[:, z], (SIZE_2D,) * 2))
            for z in evenly_spaced(0, lab.shape[0] - 1, opts.slices_per_case)]


# --------------------------------------------------------------------------- normalisation


def _scheme(channel_name: str) -> str:
    key = channel_name.casefold()
    return key if key in ("ct", "nonorm", "rescale_to_0_1", "rgb_to_0_1") else "zscore"


def _normalise(images: np.ndarray, masks: np.ndarray, groups: list[str], spec: dict,
               rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Normalise each channel of the stacked raw samples by its nnU-Net scheme."""
    out = images.copy()
    groups_arr = np.array(groups)
    fg = masks.any(axis=1)
    notes = []
    for c, name in enumerate(spec["channels"]):
        scheme, x = _scheme(name), images[:, c]
        if scheme == "ct":
            vals = x[fg] if fg.any() else x.ravel()
            vals = rng.choice(vals, min(len(vals), 200_000), replace=False)
            lo, hi = np.percentile(vals, [0.5, 99.5])
            clipped = np.clip(vals, lo, hi)
            out[:, c] = (np.clip(x, lo, hi) - clipped.mean()) / max(clipped.std(), 1e-6)
        elif scheme == "rescale_to_0_1":
            for g in np.unique(groups_arr):
                sel = groups_arr == g
                lo, hi = x[sel].min(), x[sel].max()
                out[sel, c] = (x[sel] - lo) / max(hi - lo, 1e-6)
        elif scheme == "rgb_to_0_1":
            out[:, c] = x / 255.0
        elif scheme == "zscore":
            for g in np.unique(groups_arr):
                sel = groups_arr == g
                out[sel, c] = (x[sel] - x[sel].mean()) / max(x[sel].std(), 1e-6)
        notes.append(f"{name}: {scheme}")
    return out.astype(np.float32), notes


# --------------------------------------------------------------------------- loader


def _case_names(folder: Path, spec: dict, guard) -> list[str]:
    """Cases with a label; an image without its label is reported (named) through ``guard``."""
    end = spec["ending"]
    labels_dir = require(folder / "labelsTr", "labelsTr folder")
    images_dir = require(folder / "imagesTr", "imagesTr folder")
    cases = sorted(p.name[: -len(end)] for p in labels_dir.iterdir() if p.name.endswith(end))
    imaged = sorted({p.name[: -len(end) - 5] for p in images_dir.iterdir()
                     if p.name.endswith(end) and re.search(r"_\d{4}$", p.name[: -len(end)])})
    for case in sorted(set(imaged) - set(cases)):
        guard(require, labels_dir / f"{case}{end}", "label file")
    n_train = spec["num_training"]
    if isinstance(n_train, int) and n_train != len(set(cases) | set(imaged)):
        guard.problem(data_error(folder / "dataset.json", f"numTraining is {n_train} but "
                                 f"{len(set(cases) | set(imaged))} training cases were found",
                                 "add the missing cases or correct numTraining"))
    return cases


@real("nnunet", dims=2, folder="nnunet", family=True)
def nnunet_dataset(folder: Path, opts: LoadOptions) -> SegDataset:
    """ROOT/nnunet/DatasetXXX_Name/{dataset.json, imagesTr, labelsTr} (nnU-Net v2 raw).

    Named ``nnunet:DatasetXXX_Name``. 2D png/npy or 3D nii.gz; 3D volumes give 2D slices
    unless ``dims=3``; one mask channel per non-background label (or region).
    """
    if not folder.is_dir():
        raise data_error(folder, "nnU-Net dataset folder is missing",
                         f"available: {members(folder.parent) or 'none'}; names look like "
                         "nnunet:Dataset001_Name")
    spec = _spec(folder / "dataset.json")
    guard, files = opts.guard(), [str(folder / "dataset.json")]
    raw, ids, groups = [], [], []
    cases = _case_names(folder, spec, guard)
    for case in cases[: opts.n or None]:
        read = guard(_read_case, folder, case, spec, files)
        if read is None:
            continue
        for tag, img, msk in _samples(*read, spec, opts):
            raw.append((img, msk))
            ids.append(f"{case}{tag}")
            groups.append(case)
    name = f"nnunet:{folder.name}"
    dims = 3 if raw and raw[0][0].ndim == 4 else 2
    ds = stack_samples(name, dims, raw, [c for c, _ in spec["classes"]], ids, groups, opts,
                       {"source": str(folder), "files": files, "skipped": guard.skipped,
                        "channels": spec["channels"], "labels": dict(spec["classes"])})
    ds.images, notes = _normalise(ds.images, ds.masks, groups, spec,
                                  np.random.default_rng(opts.seed))
    ds.meta["normalisation"] = "; ".join(notes)
    if [c.casefold() for c in spec["channels"]] == ["r", "g", "b"]:
        ds.meta["display"] = "rgb"
    return ds


# --------------------------------------------------------------------------- writer


def _nnunet_name(name: str) -> str:
    """A dataset name as nnU-Net folder names take it (``nuclei2d`` -> ``Nuclei2d``)."""
    clean = re.sub(r"[^A-Za-z0-9]+", "", name.replace("nnunet:", ""))
    return clean[:1].upper() + clean[1:]


def export_nnunet(ds: SegDataset, out: str | Path, dataset_id: int, *,
                  name: str | None = None) -> Path:
    """Write ``ds`` as an nnU-Net v2 raw dataset: ``OUT/DatasetXXX_Name/{dataset.json,
    imagesTr, labelsTr, imagesTs, labelsTs}``; returns the dataset folder.

    The train and val splits become the training cases (nnU-Net makes its own
    cross-validation folds), the test split ``imagesTs`` (with ``labelsTs``, which nnU-Net
    does not read, for scoring its predictions). Each image channel is one ``.nii.gz`` file
    (2D images as 2D files, read by nnU-Net's SimpleITKIO) with channel name ``zscore``
    (the images are already normalised; nnU-Net z-scores them again); the masks become one
    label map, class k = value k (where channels overlap, the later class is written on top).
    """
    import SimpleITK as sitk

    if not 0 < int(dataset_id) < 1000:
        raise data_error(Path(str(out)), f"dataset id {dataset_id} is not in 1..999",
                         "give --id between 1 and 999 (nnU-Net uses 3 digits; 500+ are free)")
    folder = Path(out) / f"Dataset{int(dataset_id):03d}_{name or _nnunet_name(ds.name)}"
    if folder.exists() and any(folder.iterdir()):
        raise data_error(folder, "the dataset folder exists and is not empty",
                         "remove it or choose another --id/--out (nothing was overwritten)")
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)

    def write(arr: np.ndarray, path: Path) -> None:
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(path), True)

    train = np.concatenate([ds.splits.get("train", []), ds.splits.get("val", [])]).astype(int)
    test = np.asarray(ds.splits.get("test", []), dtype=int)
    n_train = 0
    for part, idx in (("Tr", sorted(train)), ("Ts", sorted(test))):
        for k, i in enumerate(idx):
            case = f"case_{part.lower()}{k:04d}"
            for c in range(ds.in_channels):
                write(ds.images[i, c].astype(np.float32), folder / f"images{part}" /
                      f"{case}_{c:04d}.nii.gz")
            lab = np.zeros(ds.spatial_shape, np.uint8)
            for c in range(ds.num_classes):
                lab[ds.masks[i, c] > 0] = c + 1
            write(lab, folder / f"labels{part}" / f"{case}.nii.gz")
            n_train += part == "Tr"
    spec = {"channel_names": {str(c): "zscore" for c in range(ds.in_channels)},
            "labels": {"background": 0, **{n: k + 1 for k, n in enumerate(ds.class_names)}},
            "numTraining": n_train, "file_ending": ".nii.gz",
            "name": folder.name.split("_", 1)[1],
            "description": f"skipdsl built-in dataset '{ds.name}' (seed "
                           f"{ds.meta.get('seed')}), exported by bench datasets export"}
    (folder / "dataset.json").write_text(json.dumps(spec, indent=2))
    return folder
