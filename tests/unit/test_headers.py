"""Header values checked before a series is analysed: each bad one named, real ones let through."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from dicom_node.imaging.headers import check_headers, header_problem


def _slice(**values: object) -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.3.4"
    ds.ImagePositionPatient = [0.0, 0.0, 0.0]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.RescaleSlope, ds.RescaleIntercept = 1.0, -1024.0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


TILT = np.deg2rad(22.0)


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"ImageOrientationPatient": [0.999999, 0.001, 0.0, -0.001, 0.999999, 0.0]},  # written with 6 decimals
        {"ImageOrientationPatient": [1.0, 0.0, 0.0, 0.0, float(np.cos(TILT)), float(-np.sin(TILT))]},  # gantry tilt
        {"PhotometricInterpretation": "MONOCHROME1"},
        {"RescaleSlope": 0.5, "RescaleIntercept": -1000.5},
        {"PixelSpacing": [0.48828125, 0.5]},
    ],
    ids=["axial", "rounded cosines", "tilted 22 deg", "MONOCHROME1", "fractional rescale", "non-square pixels"],
)
def test_real_headers_pass(values: dict[str, object]) -> None:
    assert header_problem(_slice(**values)) is None


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"PixelSpacing": [0.0, 0.0]}, "PixelSpacing must be positive"),
        ({"PixelSpacing": [0.5, -0.5]}, "PixelSpacing must be positive"),
        ({"RescaleSlope": 0.0}, "RescaleSlope is 0"),
        ({"ImageOrientationPatient": [0.0] * 6}, "ImageOrientationPatient is not two orthogonal unit vectors"),
        ({"ImageOrientationPatient": [1.0, 0, 0, 1.0, 0, 0]}, "ImageOrientationPatient is not two orthogonal"),
        ({"ImageOrientationPatient": [2.0, 0, 0, 0, 2.0, 0]}, "ImageOrientationPatient is not two orthogonal"),
        ({"PhotometricInterpretation": "RGB"}, "PhotometricInterpretation is RGB"),
        ({"SamplesPerPixel": 3}, "SamplesPerPixel is 3"),
    ],
    ids=["zero spacing", "negative spacing", "zero slope", "zero cosines", "parallel cosines", "not unit",
         "RGB", "three samples"],
)
def test_values_that_cannot_describe_a_ct_slice_are_named(values: dict[str, object], problem: str) -> None:
    found = header_problem(_slice(**values))
    assert found is not None and found.startswith(problem), found


def test_check_headers_names_the_instance() -> None:
    with pytest.raises(ValueError, match=r"RescaleSlope is 0.*\(instance 1\.2\.3\.4\)"):
        check_headers([_slice(), _slice(RescaleSlope=0.0)])
