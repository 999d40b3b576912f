"""The runner: device choice, batches (a 1000-slice study), and results on the source grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from dicom_node.imaging.volume import CTVolume, assemble_volume
from dicom_node.models import inputs
from dicom_node.models.registry import LoadedModel, build_network
from dicom_node.models.runner import Runner, autocast_dtype, select_device
from dicom_node.training.metrics import dice
from tests.support.models import one_torch_thread, tiny_card  # noqa: F401
from tests.support.synthetic_ct import Lesion, SeriesSpec, head_volume, lesion_volume_ml, series_datasets

LESION = Lesion(center_mm=(15.0, 10.0, 0.0), radius_mm=12.0, hu=65.0)


def blood_logits(images: torch.Tensor) -> torch.Tensor:
    """A stand-in segmenter: +20 where the brain window reads 50-76 HU away from bone, else -20."""
    brain = images[:, :1]
    near_bone = F.max_pool2d(brain, 7, stride=1, padding=3) >= 0.99
    blood = (brain >= 0.625) & (brain <= 0.95) & ~near_bone
    return torch.where(blood, 20.0, -20.0)


class BloodUNet(nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return blood_logits(images)


class BloodMaskRCNN(nn.Module):
    """Returns the stand-in mask as one instance with score 0.9 on slices that have any."""

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        outputs = []
        for image in images:
            mask = torch.sigmoid(blood_logits(image[None]))[0]
            found = bool(mask.max() > 0.5)
            outputs.append(
                {
                    "scores": torch.tensor([0.9] if found else []),
                    "masks": mask[None] if found else torch.zeros(0, 1, *image.shape[-2:]),
                    "boxes": torch.zeros(int(found), 4),
                    "labels": torch.ones(int(found), dtype=torch.int64),
                }
            )
        return outputs


@pytest.fixture(scope="module")
def phantom() -> tuple[SeriesSpec, CTVolume]:
    spec = SeriesSpec(n_slices=12, rows=160, columns=160, pixel_spacing_mm=(1.2, 1.2), lesions=[LESION])
    return spec, assemble_volume(series_datasets(spec), series_instance_uid=spec.series_instance_uid)


def test_device_selection():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert autocast_dtype(torch.device("cpu")) is None
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            select_device("cuda")
    with pytest.raises(ValueError, match="device must be"):
        select_device("meta")


def test_a_1000_slice_study_runs_in_bounded_batches(monkeypatch):
    """Inputs are prepared batch by batch: never more than batch_size ahead of the network."""
    events: list[str] = []
    prepare_hu = inputs.prepare_hu

    def counting_prepare_hu(hu, **kwargs):
        events.append("prepare")
        return prepare_hu(hu, **kwargs)

    monkeypatch.setattr(inputs, "prepare_hu", counting_prepare_hu)
    torch.manual_seed(0)
    classifier_card = tiny_card("classifier", size=32)
    network = build_network(classifier_card).eval()
    network.register_forward_pre_hook(lambda module, args: events.append(f"run {args[0].shape[0]}"))
    hu = np.full((1000, 40, 40), -1000, dtype=np.int16)
    hu[:, 8:32, 6:34] = 35
    volume = CTVolume.from_array(hu, spacing_mm=(1.0, 0.5, 0.5))
    runner = Runner(LoadedModel(classifier_card, network, Path(".")), device="cpu", batch_size=32)

    result = runner.predict(volume)

    assert runner.peak_batch == 32
    pending = 0
    for event in events:
        if event == "prepare":
            pending += 1
            assert pending <= 32
        else:
            assert int(event.split()[1]) == pending
            pending = 0
    assert events.count("prepare") == 1000
    assert result.slice_probabilities.shape == (1000,)
    assert result.label_map.shape == (1000, 40, 40)
    assert 0.0 <= result.study_probability <= 1.0


@pytest.mark.parametrize(("kind", "network"), [("unet", BloodUNet()), ("maskrcnn", BloodMaskRCNN())])
def test_masks_are_mapped_back_to_the_source_grid_and_measured(phantom, kind, network):
    spec, volume = phantom
    _, truth = head_volume(spec)
    model = LoadedModel(tiny_card(kind, size=128), network, Path("."))
    runner = Runner(model, device="cpu", batch_size=5)

    result = runner.predict(volume)

    assert result.label_map.shape == volume.hu.shape
    assert dice(result.label_map != 0, truth) > 0.85
    assert len(result.findings) == 1
    expected_ml = lesion_volume_ml(spec, truth)
    assert result.findings[0].volume_ml == pytest.approx(expected_ml, rel=0.15)
    assert result.positive
    lesion_slices = np.flatnonzero(truth.any(axis=(1, 2)))
    assert result.slice_probabilities[lesion_slices].min() > 0.5


def test_a_lesion_free_study_is_negative(phantom):
    spec, _ = phantom
    clean = SeriesSpec(n_slices=6, rows=160, columns=160, pixel_spacing_mm=(1.2, 1.2))
    volume = assemble_volume(series_datasets(clean), series_instance_uid=clean.series_instance_uid)
    runner = Runner(LoadedModel(tiny_card("unet", size=128), BloodUNet(), Path(".")), device="cpu")
    result = runner.predict(volume)
    assert not result.findings and not result.positive and result.study_probability == 0.0


def test_the_runner_never_applies_the_cards_study_decision(phantom):
    """The decision was fitted on gated findings: DecidedModel applies it after the gate, never the runner."""
    from dataclasses import replace

    from dicom_node.models.combine import StudyDecision

    _, volume = phantom
    rejects_all = StudyDecision(intercept=-100.0, log_volume=0.0, confidence=0.0, threshold=0.5)
    card = replace(tiny_card("unet", size=128), study_decision=rejects_all)
    result = Runner(LoadedModel(card, BloodUNet(), Path(".")), device="cpu").predict(volume)
    assert len(result.findings) == 1 and result.positive


def test_windowed_input_must_match_the_measurement_grid(phantom):
    _, volume = phantom
    runner = Runner(LoadedModel(tiny_card("unet"), BloodUNet(), Path(".")), device="cpu")
    with pytest.raises(ValueError, match="one shape"):
        runner.predict_windowed(np.zeros((1, 10, 10), np.float32), volume)


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        Runner(LoadedModel(tiny_card("unet"), BloodUNet(), Path(".")), batch_size=0)
