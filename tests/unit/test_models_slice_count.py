"""The default model's study call does not grow with the slice count (issue 13, point 3).

A maximum over slice probabilities rises with every slice added: a thin-slice
study of a normal head has three times the chances of a 3.75 mm one to hold one
suspicious slice, though it shows the same anatomy. The shipped default, as the
example config builds it, is run here on one phantom head (skull base, neck,
vertex; no bleed) cut into 48, 96 and 144 slices over the same 180 mm, and on
the thinnest cut with a bleed planted. The model is the one the worker loads
(``config/dicom-node.toml``), so a change of default is tested by this file.
"""

from __future__ import annotations

import numpy as np
import pytest

from dicom_node.config import load_settings
from dicom_node.imaging.volume import CTVolume
from dicom_node.models.loading import load_configured_model
from tests.support.models import REPO
from tests.support.synthetic_ct import Anatomy, Lesion, SeriesSpec, anatomical_volume

pytestmark = pytest.mark.slow

#: Head coverage of every cut (mm), and the cuts: 1x, 2x and 3x the slices of the first.
COVERAGE_MM = 180.0
SLICE_COUNTS = (48, 96, 144)
#: How much a longer stack may raise the probability: float noise and the phantom's
#: per-slice noise, never a trend (a maximum over 3x the slices moves it by more).
TOLERANCE = 0.02
BLEED = Lesion(center_mm=(20.0, 10.0, 30.0), radius_mm=10.0)


def _head(slices: int, lesions: list[Lesion]) -> CTVolume:
    """The same phantom head, ``slices`` slices over :data:`COVERAGE_MM` (256x256, 0.9 mm pixels)."""
    thickness = COVERAGE_MM / slices
    spec = SeriesSpec(
        n_slices=slices,
        rows=256,
        columns=256,
        pixel_spacing_mm=(0.9, 0.9),
        slice_thickness_mm=thickness,
        anatomy=Anatomy(head_centre_z_mm=20.0),
        lesions=lesions,
    )
    hu, _, _ = anatomical_volume(spec)
    return CTVolume.from_array(hu, spacing_mm=(thickness, *spec.pixel_spacing_mm))


@pytest.fixture(scope="module")
def default_model():  # type: ignore[no-untyped-def]
    analysis = load_settings(REPO / "config" / "dicom-node.toml").analysis
    return load_configured_model(analysis.model_copy(update={"device": "cpu"})).model


@pytest.fixture(scope="module")
def negative_calls(default_model):  # type: ignore[no-untyped-def]
    return {n: default_model.predict(_head(n, [])) for n in SLICE_COUNTS}


def test_a_negative_head_cut_into_more_slices_does_not_raise_the_study_probability(negative_calls):
    probabilities = [negative_calls[n].study_probability for n in SLICE_COUNTS]
    assert np.all(np.diff(probabilities) <= TOLERANCE), dict(zip(SLICE_COUNTS, probabilities, strict=True))
    assert all(not negative_calls[n].positive for n in SLICE_COUNTS), probabilities
    assert all(negative_calls[n].findings == () for n in SLICE_COUNTS)


def test_a_planted_bleed_on_the_thinnest_cut_is_still_called_positive(default_model):
    result = default_model.predict(_head(SLICE_COUNTS[-1], [BLEED]))
    assert result.positive, result.study_probability
    assert len(result.findings) >= 1
