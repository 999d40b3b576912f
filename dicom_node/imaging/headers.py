"""Numeric header attributes the analysis relies on, checked up front so that a bad value
is reported by name ("RescaleSlope is not a finite number") instead of as a stray
exception deep inside volume assembly."""

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
    samples = ds.get("SamplesPerPixel")
    if samples not in (None, 1):
        return f"SamplesPerPixel is {samples}; CT slices have 1"
    return None


def check_headers(datasets: Sequence[Dataset]) -> None:
    """Raise ``ValueError`` naming the attribute and instance of the first unusable value."""
    for ds in datasets:
        problem = header_problem(ds)
        if problem is not None:
            raise ValueError(f"{problem} (instance {ds.get('SOPInstanceUID', '?')})")
