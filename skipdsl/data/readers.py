"""File readers that turn every failure into a :class:`~skipdsl.errors.DataError` naming the file.

Heavy readers are imported inside the functions that use them (nibabel, SimpleITK, PIL), so
``import skipdsl`` stays light. PNG goes through Pillow, which matplotlib already depends on,
because it gives the exact integer values that label maps need.
"""
from __future__ import annotations

import csv
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import DataError
from .base import data_error

REDOWNLOAD = "the file is truncated or corrupt: download or export it again (or load with " \
             "on_error='skip' to leave it out)"


def require(path: Path, what: str = "file") -> Path:
    """``path`` if it exists, else a DataError naming it."""
    if not path.exists():
        raise data_error(path, f"{what} is missing",
                         "add it, or load with on_error='skip' to leave this case out")
    return path


@contextmanager
def reading(path: Path, what: str = "file") -> Iterator[None]:
    """Wrap a read: a missing file or any reader exception becomes a DataError naming it."""
    require(path, what)
    try:
        yield
    except DataError:
        raise
    except Exception as err:  # readers raise anything: OSError, EOFError, zlib.error, ...
        raise data_error(path, f"cannot read {what} ({type(err).__name__}: {err})",
                         REDOWNLOAD) from err


def read_png(path: Path) -> np.ndarray:
    """A PNG (or BMP/TIFF) as an array with its stored integer values: (H, W) or (H, W, C)."""
    from PIL import Image

    with reading(path, "image"):
        with Image.open(path) as im:
            im.load()
            arr = np.array(im)
    return arr


def read_npy(path: Path) -> np.ndarray:
    with reading(path, "array"):
        arr = np.load(path, allow_pickle=False)
    return arr


def read_nifti(path: Path) -> np.ndarray:
    """A NIfTI volume reoriented to RAS+, as an array ``(x, y, z[, ...])`` (raw dtype)."""
    import nibabel as nib

    with reading(path, "NIfTI volume"):
        img = nib.load(str(path))
        arr = np.asanyarray(img.dataobj)
        ornt = nib.orientations.io_orientation(img.affine)
        arr = nib.orientations.apply_orientation(arr, ornt) if arr.ndim >= 3 else arr
    return np.asarray(arr)


def nifti_to_zyx(arr: np.ndarray) -> np.ndarray:
    """RAS+ ``(x, y, z)`` -> ``(z, y, x)`` with anterior up and patient right on the image left
    (the usual radiological view), so that ``out[z]`` is an axial slice ready to show."""
    return np.ascontiguousarray(arr.transpose(2, 1, 0)[:, ::-1, :])


def _mhd_header(path: Path) -> dict[str, str]:
    with reading(path, "MetaImage header"):
        lines = path.read_text(errors="replace").splitlines()
    return {k.strip(): v.strip() for k, _, v in (ln.partition("=") for ln in lines) if _}


_MET_BYTES = {"MET_UCHAR": 1, "MET_CHAR": 1, "MET_USHORT": 2, "MET_SHORT": 2, "MET_UINT": 4,
              "MET_INT": 4, "MET_FLOAT": 4, "MET_DOUBLE": 8, "MET_ULONG": 8, "MET_LONG": 8}


def read_mhd(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A MetaImage (``.mhd`` + its ``.raw``) via SimpleITK.

    Returns ``(array (z, y, x), origin (x, y, z), spacing (x, y, z), direction 3x3)``. The
    ``.raw`` named by the header is checked first, so a missing or short one is reported by
    its own name.
    """
    import SimpleITK as sitk

    head = _mhd_header(path)
    data = head.get("ElementDataFile", "")
    if data and data != "LOCAL" and head.get("CompressedData", "False").lower() != "true":
        raw = path.parent / data
        require(raw, "raw data file (named by the .mhd header)")
        dims = [int(x) for x in head.get("DimSize", "0").split()]
        want = int(np.prod(dims)) * _MET_BYTES.get(head.get("ElementType", ""), 0) * int(
            head.get("ElementNumberOfChannels", "1"))
        if want and raw.stat().st_size < want:
            raise data_error(raw, f"truncated: {raw.stat().st_size} bytes, the header of "
                             f"{path.name} needs {want}", REDOWNLOAD)
    with reading(path, "MetaImage"):
        img = sitk.ReadImage(str(path))
        arr = sitk.GetArrayFromImage(img)
        origin = np.array(img.GetOrigin(), dtype=np.float64)
        spacing = np.array(img.GetSpacing(), dtype=np.float64)
        direction = np.array(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    return arr, origin, spacing, direction


def read_sitk(path: Path) -> np.ndarray:
    """Any SimpleITK-readable image (``.mha``, ``.nrrd``, ...) as ``(z, y, x)`` / ``(y, x)``."""
    import SimpleITK as sitk

    with reading(path, "image"):
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    return arr


def read_json(path: Path) -> dict[str, Any]:
    with reading(path, "JSON file"):
        data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise data_error(path, "expected a JSON object at the top level", "fix the file")
    return data


def read_csv(path: Path, columns: list[str]) -> list[dict[str, str]]:
    """Rows of a CSV file that must have ``columns`` (DataError naming the file if not)."""
    with reading(path, "CSV file"):
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            have = reader.fieldnames or []
    missing = [c for c in columns if c not in have]
    if missing:
        raise data_error(path, f"missing columns {missing} (found {have})",
                         f"the file needs the columns {columns}")
    return rows


def read_image_file(path: Path) -> np.ndarray:
    """Read by extension: png/bmp/tif, npy, nii/nii.gz (as z, y, x), mha/mhd/nrrd/nii via ITK."""
    name = path.name.lower()
    if name.endswith((".png", ".bmp", ".tif", ".tiff")):
        return read_png(path)
    if name.endswith(".npy"):
        return read_npy(path)
    if name.endswith((".nii", ".nii.gz")):
        arr = read_nifti(path)
        return nifti_to_zyx(arr) if arr.ndim == 3 else arr.T
    if name.endswith((".mha", ".mhd", ".nrrd", ".nhdr")):
        return read_mhd(path)[0] if name.endswith(".mhd") else read_sitk(path)
    raise data_error(path, "unsupported file type",
                     "use .png, .npy, .nii.gz, .nii, .mha, .mhd or .nrrd")
