"""Reader of NIfTI pairs in the CT-ICH / BHSD layout.

``ct_scans/<name>.nii[.gz]`` (HU) and ``masks/<name>.nii[.gz]`` (any nonzero
voxel is hemorrhage; BHSD's subtype labels are merged). Split by scan, with a
seed (:mod:`dicom_node.training.splits`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from dicom_node.models.inputs import InputSpec
from dicom_node.training.cases import Case, PseudoVolume, SliceSet, volume_slices


def nifti_pairs(root: str | Path) -> list[tuple[str, Path, Path]]:
    """(name, scan, mask) for every ``ct_scans/<name>.nii[.gz]`` with a ``masks/<name>.nii[.gz]``."""
    root = Path(root)
    scans_dir, masks_dir = root / "ct_scans", root / "masks"
    if not scans_dir.is_dir() or not masks_dir.is_dir():
        raise FileNotFoundError(f"{root} is not the CT-ICH/BHSD layout: it needs ct_scans/ and masks/")

    def stem(path: Path) -> str:
        return path.name.removesuffix(".gz").removesuffix(".nii")

    masks = {stem(p): p for p in masks_dir.iterdir() if p.name.endswith((".nii", ".nii.gz"))}
    pairs = []
    for scan in sorted(scans_dir.iterdir()):
        if not scan.name.endswith((".nii", ".nii.gz")):
            continue
        name = stem(scan)
        if name not in masks:
            raise ValueError(f"{scan} has no mask: expected masks/{name}.nii or .nii.gz")
        pairs.append((name, scan, masks[name]))
    if not pairs:
        raise FileNotFoundError(f"{scans_dir} holds no .nii or .nii.gz scans")
    return pairs


def read_nifti_case(scan: Path, mask: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """HU ``(slices, rows, cols)`` float32, mask bool, spacing (z, y, x) mm, in display orientation.

    Both images are reoriented to RAS+ (nibabel's canonical), then each axial
    slice is laid out as a radiologist reads it: anterior at the top, the
    patient's right on the left of the image; slice 0 is the most inferior.
    """
    import nibabel as nib

    scan_img = nib.as_closest_canonical(nib.load(str(scan)))
    mask_img = nib.as_closest_canonical(nib.load(str(mask)))
    if scan_img.shape[:3] != mask_img.shape[:3]:
        raise ValueError(f"{scan.name} and its mask differ in shape: {scan_img.shape} vs {mask_img.shape}")
    if not np.allclose(scan_img.affine, mask_img.affine, atol=1e-3):
        raise ValueError(f"{scan.name} and its mask are not on the same grid (affines differ)")
    hu = np.asarray(scan_img.dataobj, dtype=np.float32)
    labels = np.asarray(mask_img.dataobj)
    if hu.ndim != 3:
        raise ValueError(f"{scan.name} must be a 3D volume, not {hu.ndim}D")
    # RAS+ array (i: to the right, j: anterior, k: superior) -> (k, rows = -j, cols = -i).
    hu = np.ascontiguousarray(hu[::-1, ::-1, :].transpose(2, 1, 0))
    truth = np.ascontiguousarray((labels[::-1, ::-1, :] != 0).transpose(2, 1, 0))
    zooms = scan_img.header.get_zooms()[:3]
    return hu, truth, (float(zooms[2]), float(zooms[1]), float(zooms[0]))


#: Air in a CT in Hounsfield units is about -1000; a scan whose values never go below this
#: was stored windowed or normalised (0-255, 0-1), not in HU.
AIR_BELOW_HU = -500.0


def looks_like_hu(values: np.ndarray) -> bool:
    """True when a NIfTI scan's values are Hounsfield units: it holds air (below -500).

    NIfTI carries no unit. A head CT exported windowed (0-255) would put blood near 190,
    above the gate's ceiling for blood, and the density rule (only for measured HU) would
    drop every bleed: such a scan must not count as measured HU.
    """
    return bool(values.size) and float(np.min(values)) < AIR_BELOW_HU


def nifti_slices(root: str | Path, names: Sequence[str], spec: InputSpec) -> SliceSet:
    """Model-size training slices of the named NIfTI scans (every slice, labelled from its mask)."""
    wanted = set(names)
    items = []
    for name, scan, mask in nifti_pairs(root):
        if name in wanted:
            hu, truth, spacing = read_nifti_case(scan, mask)
            items += volume_slices(name, hu, truth, spacing, spec)
    return SliceSet.build(items)


def nifti_cases(root: str | Path, names: Sequence[str] | None = None) -> Iterator[Case]:
    """Evaluation cases of NIfTI scans (all, or the named ones), one volume each."""
    for name, scan, mask in nifti_pairs(root):
        if names is None or name in names:
            hu, truth, spacing = read_nifti_case(scan, mask)
            volume = PseudoVolume(hu=hu, spacing_mm=spacing, real_hu=looks_like_hu(hu))
            yield Case(key=name, volume=volume, label=int(truth.any()), truth=truth)


