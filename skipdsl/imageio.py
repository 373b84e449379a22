"""Images to predict on, and their masks written back in the same format.

Inputs (:func:`read_image`), as ``(C, *spatial)`` float32 in the axis order the datasets use:

- PNG / TIFF (Pillow): 2D; grey, RGB or RGBA (the alpha channel is dropped for a 3-channel
  network); a multi-page TIFF is a 3D stack ``(D, H, W)``. Integer images are divided by their
  type's maximum (255, 65535), as the dataset readers do.
- ``.npy``: ``(*spatial)``, ``(C, *spatial)`` or ``(*spatial, C)``.
- NIfTI (``.nii``, ``.nii.gz``; nibabel): 2D ``(X, Y)`` or ``(X, Y, 1)``, 3D ``(X, Y, Z)``, a
  4th axis holds channels. Volumes are turned to RAS+ and ``(z, y, x)``, as the dataset
  readers do (:func:`skipdsl.data.readers.nifti_to_zyx`), and masks are turned back, so a mask
  lies on its image voxel for voxel; it keeps the image's affine and header.

Masks (:func:`write_mask`): uint8, written atomically under the input's file name and format.
A binary mask (one class) is 0/255 in PNG and TIFF (visible in any viewer), 0/1 in ``.npy``
and NIfTI; an argmax label map holds 0 (background) .. K in every format; K thresholded
classes are K channels in ``.npy`` ``(K, *spatial)`` and NIfTI ``(*spatial, K)``, and one
bit-coded image in PNG/TIFF (bit k set: class k). Every unreadable or unfitting input raises
a ``DataError`` naming the file and what to do.
"""
from __future__ import annotations

import gzip
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .fileio import atomic_write_bytes

__all__ = ["SUFFIXES", "Image", "kind_of", "read_image", "write_mask", "find_inputs"]

#: file endings -> kind
SUFFIXES = {".png": "png", ".tif": "tiff", ".tiff": "tiff", ".npy": "npy", ".nii": "nifti",
            ".nii.gz": "nifti"}


def _error(path: Any, problem: str, todo: str):
    from .data.base import data_error

    return data_error(path, problem, todo)


def kind_of(path: str | Path) -> str | None:
    """``png``, ``tiff``, ``npy`` or ``nifti`` from the file name; ``None`` if unsupported."""
    name = Path(path).name.lower()
    return next((k for s, k in sorted(SUFFIXES.items(), key=lambda i: -len(i[0]))
                 if name.endswith(s)), None)


def find_inputs(paths: list[str | Path]) -> list[Path]:
    """Files to predict on: each file as given, each folder's supported files (sorted, not
    recursive). A missing path, an unsupported file or nothing to do raise a ``DataError``."""
    files: list[Path] = []
    supported = ", ".join(SUFFIXES)
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and kind_of(f))
            if not found:
                raise _error(p, f"folder holds no image to predict on ({supported})",
                             "give a folder of images, or the files themselves")
            files += found
        elif not p.exists():
            raise _error(p, "input is missing", "check the path")
        elif kind_of(p) is None:
            raise _error(p, "unsupported file type", f"use one of {supported}")
        else:
            files.append(p)
    if not files:
        raise _error("(inputs)", "no input given", "name image files or folders")
    return files


@dataclass
class Image:
    """One input: ``array`` ``(C, *spatial)`` float32 as the network takes it, and what
    :func:`write_mask` needs to write its mask back in the same format and layout."""

    path: Path
    kind: str
    array: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def spatial(self) -> tuple[int, ...]:
        return tuple(self.array.shape[1:])


def _to_float(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == bool:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        return (arr / float(np.iinfo(arr.dtype).max)).astype(np.float32)
    return arr.astype(np.float32)


def _channels(arr: np.ndarray, path: Path, dims: int, channels: int, *,
              last: bool) -> tuple[np.ndarray, str]:
    """(*spatial) / (C, *spatial) / (*spatial, C) -> (C, *spatial) and the layout found."""
    if arr.ndim == dims:
        found, arr, layout = 1, arr[None], "none"
    elif arr.ndim == dims + 1:
        first_ok, last_ok = arr.shape[0] == channels, arr.shape[-1] == channels
        if last and (last_ok or not first_ok):
            found, arr, layout = arr.shape[-1], np.moveaxis(arr, -1, 0), "last"
        elif first_ok or not last_ok:
            found, layout = arr.shape[0], "first"
        else:
            found, arr, layout = arr.shape[-1], np.moveaxis(arr, -1, 0), "last"
    else:
        raise _error(path, f"array of shape {arr.shape} for a {dims}D network",
                     f"give {dims} spatial axes, with or without one channel axis")
    if found == 4 and channels == 3 and layout != "none":
        arr = arr[:3]  # RGBA -> RGB (the dataset readers do the same)
    if arr.shape[0] != channels:
        raise _error(path, f"the image has {arr.shape[0]} channel(s) (shape {arr.shape}), the "
                     f"network takes {channels}",
                     f"convert it to {channels} channel(s), or use a checkpoint trained on "
                     f"{arr.shape[0]}-channel images")
    return np.ascontiguousarray(arr), layout


def _read_pil(path: Path, dims: int, channels: int) -> Image:
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as im:
            pages = getattr(im, "n_frames", 1)
            frames = []
            for k in range(pages):
                im.seek(k)
                frames.append(np.array(im))
            mode = im.mode
    except Exception as err:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise _error(path, f"cannot read the image ({type(err).__name__}: {err})",
                     "the file is truncated or not an image: export it again") from None
    if pages > 1 and dims == 2:
        raise _error(path, f"a {pages}-page TIFF for a 2D network",
                     "save one page per file, or use a 3D checkpoint")
    if dims == 3 and pages == 1:
        raise _error(path, "a 2D image for a 3D network",
                     "give a volume: a multi-page TIFF, a NIfTI file or a (D, H, W) .npy")
    arr = np.stack(frames) if dims == 3 else frames[0]
    if mode == "LA" or (arr.ndim == dims + 1 and arr.shape[-1] == 2 and channels == 1):
        arr = arr[..., 0]  # grey + alpha -> grey
    arr, layout = _channels(arr, path, dims, channels, last=True)
    return Image(path, kind_of(path) or "png", _to_float(arr),
                 {"pages": pages, "layout": layout})


def _read_npy(path: Path, dims: int, channels: int) -> Image:
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as err:  # ValueError (pickled objects), EOFError, OSError, ...
        raise _error(path, f"cannot read the array ({type(err).__name__}: {err})",
                     "save it again with numpy.save (numbers only, no pickled objects)") from None
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise _error(path, f"array of type {arr.dtype}", "save a numeric array")
    arr, layout = _channels(arr, path, dims, channels, last=False)
    return Image(path, "npy", arr.astype(np.float32), {"layout": layout})


_RAS = np.array([[0, 1], [1, 1], [2, 1]])


def _read_nifti(path: Path, dims: int, channels: int) -> Image:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        arr = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as err:  # ImageFileError, EOFError, zlib.error, ...
        raise _error(path, f"cannot read the NIfTI file ({type(err).__name__}: {err})",
                     "the file is truncated or not NIfTI: export it again") from None
    shape = arr.shape
    if dims == 2 and arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if dims == 2 and arr.ndim == 3 and arr.shape[2] not in (channels,):
        raise _error(path, f"a volume of shape {shape} for a 2D network",
                     "predicting volumes slice by slice with a 2D network is not supported: "
                     "give 2D images, or use a 3D checkpoint")
    spatial = arr if arr.ndim == dims else arr[..., 0]
    ornt = None
    if dims == 3 and spatial.ndim == 3:
        ornt = nib.orientations.io_orientation(img.affine)
        arr = nib.orientations.apply_orientation(arr, ornt)  # -> RAS+ (x, y, z[, c])
        arr = np.swapaxes(arr, 0, 2)[:, ::-1]  # -> (z, y, x[, c]), anterior up
    elif dims == 2 and arr.ndim >= 2:
        arr = np.swapaxes(arr, 0, 1)  # (x, y) -> (y, x), as the dataset readers do
    arr, layout = _channels(np.ascontiguousarray(arr), path, dims, channels, last=True)
    return Image(path, "nifti", arr, {"layout": layout, "shape": shape, "ornt": ornt,
                                      "affine": img.affine, "header": img.header,
                                      "cls": type(img)})


def read_image(path: str | Path, *, dims: int, channels: int) -> Image:
    """Read one input for a ``dims``-D network of ``channels`` input channels (see above)."""
    path = Path(path)
    kind = kind_of(path)
    if not path.is_file():
        raise _error(path, "input is missing", "check the path")
    if kind in ("png", "tiff"):
        return _read_pil(path, dims, channels)
    if kind == "npy":
        return _read_npy(path, dims, channels)
    if kind == "nifti":
        return _read_nifti(path, dims, channels)
    raise _error(path, "unsupported file type", f"use one of {', '.join(SUFFIXES)}")


# -- writing --------------------------------------------------------------------------------


def _bitcode(mask: np.ndarray) -> np.ndarray:
    """(K, *spatial) booleans -> one uint8 image, bit k = class k (K <= 8)."""
    if mask.shape[0] > 8:
        raise ValueError(f"{mask.shape[0]} classes do not fit the bits of one 8-bit image")
    weights = (1 << np.arange(mask.shape[0], dtype=np.uint8)).reshape(-1, *[1] * (mask.ndim - 1))
    return (mask.astype(np.uint8) * weights).sum(0).astype(np.uint8)


def _pil_bytes(arr: np.ndarray, kind: str) -> bytes:
    from PIL import Image as PILImage

    buf = io.BytesIO()
    frames = [PILImage.fromarray(a) for a in (arr if arr.ndim == 3 else arr[None])]
    fmt = "PNG" if kind == "png" else "TIFF"
    if len(frames) > 1:
        frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:])
    else:
        frames[0].save(buf, format=fmt)
    return buf.getvalue()


def _nifti_bytes(arr: np.ndarray, like: Image) -> bytes:
    """``arr`` ((z, y, x) / (y, x), then classes last) back in the input's voxel order."""
    import nibabel as nib

    info = like.info
    if info["ornt"] is not None:  # undo (z, y, x) and RAS+
        arr = np.swapaxes(arr[:, ::-1], 0, 2)
        back = nib.orientations.ornt_transform(_RAS, info["ornt"])
        arr = nib.orientations.apply_orientation(arr, back)
    else:
        arr = np.swapaxes(arr, 0, 1)
        if len(info["shape"]) >= 3 and info["shape"][2] == 1:
            arr = arr[:, :, None]
    header = info["header"].copy()
    out = info["cls"](np.ascontiguousarray(arr).astype(np.uint8), info["affine"], header)
    out.set_data_dtype(np.uint8)
    out.header.set_slope_inter(1.0, 0.0)
    data = out.to_bytes()
    return gzip.compress(data, mtime=0) if like.path.name.lower().endswith(".gz") else data


def write_mask(path: str | Path, mask: np.ndarray, like: Image, *, labels: bool = False) -> Path:
    """Write ``mask`` for the input ``like`` to ``path`` (atomically), in ``like``'s format.

    ``mask``: booleans ``(K, *spatial)``, or with ``labels`` an integer label map
    ``(*spatial)`` (0 = background).
    """
    path = Path(path)
    mask = np.asarray(mask)
    if labels:
        arr = mask.astype(np.uint8)
        binary = False
    else:
        binary = mask.shape[0] == 1
        arr = mask[0].astype(np.uint8) if binary else mask.astype(np.uint8)
    if like.kind in ("png", "tiff"):
        if not labels and not binary:
            arr = _bitcode(mask)
        data = _pil_bytes(arr * 255 if binary else arr, like.kind)
    elif like.kind == "npy":
        buf = io.BytesIO()
        np.save(buf, arr)
        data = buf.getvalue()
    else:
        data = _nifti_bytes(arr if labels or binary else np.moveaxis(arr, 0, -1), like)
    return atomic_write_bytes(path, data)
