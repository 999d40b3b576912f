"""Synthetic head CT series, generated at test time (no patient data anywhere).

The generator lives in the package (:mod:`dicom_node.demo`), where ``dicom-node demo``
uses it too; this module keeps the names the tests import.
Test-only profiles go below the import.
"""

from __future__ import annotations

from dicom_node.demo import (  # noqa: F401 - re-exported for the tests
    TEST_UID_PREFIX,
    Anatomy,
    Lesion,
    SeriesSpec,
    anatomical_volume,
    head_volume,
    lesion_volume_ml,
    series_datasets,
    write_series,
)
