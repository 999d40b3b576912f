"""Header attributes the analysis relies on, checked up front so that a bad value is
reported by name ("RescaleSlope is not a finite number", "PixelSpacing must be
positive") instead of as a stray exception, or a meaningless volume, deep inside
volume assembly."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydicom.dataset import Dataset

#: keyword -> number of values it must have (when present); all must be finite numbers.
NUMERIC_ATTRIBUTES: dict[str, int] = {
    "SeriesNumber": 1,
    "InstanceNumber": 1,
    "ImagePositionPatient": 3,
    "ImageOrientationPatient": 6,
    "PixelSpacing": 2,
    "SliceThickness": 1,
    "RescaleSlope": 1,
    "RescaleIntercept": 1,
}


#: Direction cosines this far from unit length, or from orthogonal, do not describe a plane.
_COSINE_TOLERANCE = 1e-2
#: What the CT Image module allows (PS3.3 C.8.2.1.1.1); HU come from the modality LUT either way.
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


def _values(value: object) -> list[object]:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return list(value)  # type: ignore[call-overload]
    return [value]


def header_problem(ds: Dataset) -> str | None:
    """The first unusable numeric attribute of ``ds``, described, or None."""
    for keyword, count in NUMERIC_ATTRIBUTES.items():
        if keyword not in ds:
            continue
        try:
            raw = ds[keyword].value
        except Exception:  # pydicom refuses to convert the stored bytes
            return f"{keyword} cannot be read"
        if raw in (None, ""):
            if keyword in ("RescaleSlope", "RescaleIntercept"):
                return f"{keyword} is empty"
            continue
        values = _values(raw)
        if len(values) != count:
            return f"{keyword} has {len(values)} value(s), {count} expected"
        try:
            numbers = [float(v) for v in values]  # type: ignore[arg-type]
        except (TypeError, ValueError, OverflowError):
            return f"{keyword} is not numeric"
        if not all(math.isfinite(n) for n in numbers):
            return f"{keyword} is not a finite number"
        problem = _value_problem(keyword, numbers)
        if problem is not None:
            return problem
    return _pixel_problem(ds)


def _value_problem(keyword: str, numbers: list[float]) -> str | None:
    """A number that is finite but still cannot describe a CT slice."""
    if keyword == "PixelSpacing" and min(numbers) <= 0:
        return "PixelSpacing must be positive: it is the distance between pixel centres"
    if keyword == "RescaleSlope" and numbers[0] == 0:
        return "RescaleSlope is 0: every pixel would map to the same value"
    if keyword == "ImageOrientationPatient":
        row, column = numbers[:3], numbers[3:]
        lengths = [math.sqrt(sum(c * c for c in v)) for v in (row, column)]
        dot = sum(r * c for r, c in zip(row, column, strict=True))
        if any(abs(n - 1) > _COSINE_TOLERANCE for n in lengths) or abs(dot) > _COSINE_TOLERANCE:
            return "ImageOrientationPatient is not two orthogonal unit vectors: the image plane is undefined"
    return None


def _pixel_problem(ds: Dataset) -> str | None:
    """Pixels a CT slice cannot have: more than one sample, or a colour interpretation."""
    try:
        samples = ds.get("SamplesPerPixel")
        photometric = str(ds.get("PhotometricInterpretation", "") or "").strip()
    except Exception:  # pydicom refuses to convert the stored bytes
        return "SamplesPerPixel or PhotometricInterpretation cannot be read"
    if samples not in (None, 1):
        return f"SamplesPerPixel is {samples}; CT slices have 1"
    if photometric and photometric not in MONOCHROME:
        return f"PhotometricInterpretation is {photometric}; CT slices are MONOCHROME1 or MONOCHROME2"
    return None


def check_headers(datasets: Sequence[Dataset]) -> None:
    """Raise ``ValueError`` naming the attribute and instance of the first unusable value."""
    for ds in datasets:
        problem = header_problem(ds)
        if problem is not None:
            raise ValueError(f"{problem} (instance {ds.get('SOPInstanceUID', '?')})")
