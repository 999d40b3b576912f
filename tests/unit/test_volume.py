"""Volume assembly: geometry sorting, HU, compressed syntaxes, and the real-world edge cases."""

from __future__ import annotations

import random
import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGLosslessSV1,
    RLELossless,
    generate_uid,
)

from dicom_node.imaging.volume import AssemblyWarningKind as Kind, CTVolume, assemble_volume
from tests.support.synthetic_ct import (
    TEST_UID_PREFIX,
    Lesion,
    SeriesSpec,
    head_volume,
    lesion_volume_ml,
    series_datasets,
    write_series,
)

LESION = Lesion(center_mm=(20.0, 10.0, 5.0), radius_mm=10.0)


def small_spec(**overrides) -> SeriesSpec:
    """A quick 24-slice, 128x128 phantom (1.8 mm pixels) with one lesion."""
    values = dict(
        n_slices=24,
        rows=128,
        columns=128,
        pixel_spacing_mm=(1.8, 1.8),
        lesions=[LESION],
    )
    values.update(overrides)
    return SeriesSpec(**values)


def lesion_centroid_mm(volume: CTVolume, mask: np.ndarray) -> np.ndarray:
    return volume.index_to_patient(np.argwhere(mask).mean(axis=0))


def test_slices_are_sorted_by_geometry_not_file_order():
    spec = small_spec()
    datasets = series_datasets(spec)
    shuffled = datasets[:]
    random.Random(1).shuffle(shuffled)
    # InstanceNumber must not matter either: make it lie.
    for number, ds in enumerate(shuffled, start=1):
        ds.InstanceNumber = number

    volume = assemble_volume(shuffled, series_instance_uid=spec.series_instance_uid)

    expected, mask = head_volume(spec)
    assert volume.hu.dtype == np.int16
    np.testing.assert_array_equal(volume.hu, expected)
    assert volume.source_sop_instance_uids == tuple(ds.SOPInstanceUID for ds in datasets)
    assert volume.spacing_mm == pytest.approx((5.0, 1.8, 1.8))
    assert volume.warnings == ()
    assert volume.frame_of_reference_uid == spec.frame_of_reference_uid
    np.testing.assert_allclose(lesion_centroid_mm(volume, mask), LESION.center_mm, atol=0.3)


def test_matches_highdicom_on_a_clean_series():
    spec = small_spec(n_slices=8)
    datasets = series_datasets(spec)
    volume = assemble_volume(datasets, series_instance_uid=spec.series_instance_uid)
    reference = hd.get_volume_from_series(datasets)

    # highdicom stacks the other way round (right-handed index order); ours
    # ascends along the slice normal. Same voxels, same positions.
    np.testing.assert_array_equal(reference.array[::-1], volume.hu)
    n = volume.shape[0]
    for k, i, j in [(0, 0, 0), (n - 1, 5, 7), (3, 100, 20)]:
        np.testing.assert_allclose(
            volume.index_to_patient([k, i, j]),
            reference.map_indices_to_reference(np.array([[n - 1 - k, i, j]]))[0],
            atol=1e-6,
        )
    converted = volume.to_highdicom()
    np.testing.assert_allclose(converted.affine, volume.affine)
    assert converted.frame_of_reference_uid == spec.frame_of_reference_uid


def test_paths_and_datasets_give_the_same_volume(tmp_path):
    spec = small_spec(n_slices=6)
    paths = write_series(spec, tmp_path)
    from_paths = assemble_volume(paths[::-1], series_instance_uid=spec.series_instance_uid)
    from_datasets = assemble_volume(
        [pydicom.dcmread(p) for p in paths], series_instance_uid=spec.series_instance_uid
    )
    np.testing.assert_array_equal(from_paths.hu, from_datasets.hu)
    np.testing.assert_allclose(from_paths.affine, from_datasets.affine)
    assert from_paths.source_sop_instance_uids == from_datasets.source_sop_instance_uids


def _dcmtk(tool: str) -> str:
    path = shutil.which(tool, path="/usr/bin")
    if path is None:
        pytest.skip(f"DCMTK {tool} is not installed")
    return path


@pytest.mark.dcmtk
@pytest.mark.parametrize(
    ("tool", "transfer_syntax"),
    [("dcmcjpeg", JPEGLosslessSV1), ("dcmcrle", RLELossless), ("dcmcjpls", JPEGLSLossless)],
)
def test_dcmtk_compressed_series_decode_to_the_same_hu(tmp_path, tool, transfer_syntax):
    executable = _dcmtk(tool)
    spec = small_spec(n_slices=4, rows=64, columns=64, pixel_spacing_mm=(3.6, 3.6))
    compressed = []
    for path in write_series(spec, tmp_path / "raw"):
        out = tmp_path / f"{path.stem}.{tool}.dcm"
        subprocess.run([executable, str(path), str(out)], check=True, capture_output=True)
        compressed.append(out)
    assert pydicom.dcmread(compressed[0]).file_meta.TransferSyntaxUID == transfer_syntax

    volume = assemble_volume(compressed, series_instance_uid=spec.series_instance_uid)
    np.testing.assert_array_equal(volume.hu, head_volume(spec)[0])


@pytest.mark.parametrize("transfer_syntax", [RLELossless, JPEG2000Lossless, JPEGLSLossless])
def test_pydicom_compressed_datasets_decode_to_the_same_hu(transfer_syntax):
    spec = small_spec(n_slices=3, rows=64, columns=64, pixel_spacing_mm=(3.6, 3.6))
    datasets = series_datasets(spec)
    for ds in datasets:
        ds.compress(transfer_syntax)
    volume = assemble_volume(datasets, series_instance_uid=spec.series_instance_uid)
    np.testing.assert_array_equal(volume.hu, head_volume(spec)[0])


def test_gantry_tilt_keeps_the_acquired_grid_with_a_sheared_affine():
    spec = small_spec(gantry_tilt_deg=20.0)
    datasets = series_datasets(spec)
    volume = assemble_volume(datasets[::-1], series_instance_uid=spec.series_instance_uid)

    expected, mask = head_volume(spec)
    np.testing.assert_array_equal(volume.hu, expected)  # not resampled
    assert volume.is_tilted
    assert volume.gantry_tilt_deg == pytest.approx(20.0, abs=0.01)
    assert [w.kind for w in volume.warnings] == [Kind.GANTRY_TILT]
    assert "gantry tilt of 20.00 deg" in str(volume.warnings[0])
    # z is the distance between planes along their normal, so voxel volumes stay right.
    assert volume.spacing_mm[0] == pytest.approx(5.0, abs=1e-3)
    assert volume.voxel_volume_mm3 == pytest.approx(abs(np.linalg.det(volume.affine[:3, :3])), rel=1e-6)
    assert mask.sum() * volume.voxel_volume_mm3 / 1000 == pytest.approx(lesion_volume_ml(spec, mask), rel=1e-3)
    # The shear is in the affine: the planted lesion lands where it was planted.
    np.testing.assert_allclose(lesion_centroid_mm(volume, mask), LESION.center_mm, atol=0.3)
    # Every slice's own ImagePositionPatient is reproduced.
    for k, ds in enumerate(datasets):
        np.testing.assert_allclose(volume.image_positions[k], [float(v) for v in ds.ImagePositionPatient], atol=1e-3)
    with pytest.raises(ValueError, match="orthogonal affine"):
        volume.to_highdicom()


def test_one_missing_slice_is_filled_and_recorded_without_compressing_z():
    spec = small_spec(n_slices=40)
    datasets = series_datasets(spec)
    missing = 17
    volume = assemble_volume(
        datasets[:missing] + datasets[missing + 1 :], series_instance_uid=spec.series_instance_uid
    )

    assert volume.shape[0] == 40
    assert volume.spacing_mm[0] == pytest.approx(5.0)
    assert volume.interpolated_slices == (missing,)
    assert volume.source_sop_instance_uids[missing] is None
    assert volume.source_sop_instance_uids[missing + 1] == datasets[missing + 1].SOPInstanceUID
    assert [w.kind for w in volume.warnings] == [Kind.MISSING_SLICES]
    assert volume.warnings[0].text.startswith("1 missing slice(s) filled")
    expected, _ = head_volume(spec)
    blended = np.rint((expected[missing - 1].astype(np.float32) + expected[missing + 1]) / 2)
    np.testing.assert_array_equal(volume.hu[missing], blended)
    np.testing.assert_array_equal(np.delete(volume.hu, missing, axis=0), np.delete(expected, missing, axis=0))
    np.testing.assert_allclose(
        volume.image_positions[missing], [float(v) for v in datasets[missing].ImagePositionPatient], atol=1e-3
    )


def test_a_long_gap_is_refused():
    spec = small_spec(n_slices=40)
    datasets = series_datasets(spec)
    with pytest.raises(ValueError, match="at most 2 missing slice"):
        assemble_volume(datasets[:10] + datasets[13:], series_instance_uid=spec.series_instance_uid)


def test_irregular_spacing_is_refused():
    spec = small_spec(n_slices=8)
    datasets = series_datasets(spec)
    position = [float(v) for v in datasets[4].ImagePositionPatient]
    datasets[4].ImagePositionPatient = [position[0], position[1], position[2] + 2.0]
    with pytest.raises(ValueError, match="irregular"):
        assemble_volume(datasets, series_instance_uid=spec.series_instance_uid)


def test_two_instances_at_one_position_keep_the_one_received_last_and_a_resent_instance_is_read_once():
    """A PACS re-export sends a slice again under a new SOP Instance UID: the volume keeps the
    instance received last (last in the list) and says how many it dropped, and whether their
    pixels differed."""
    spec = small_spec(n_slices=6)
    datasets = series_datasets(spec)
    volume = assemble_volume(datasets + [datasets[2]], series_instance_uid=spec.series_instance_uid)
    assert volume.shape[0] == 6
    assert [w.kind for w in volume.warnings] == [Kind.DUPLICATE_INSTANCES]

    twin = series_datasets(spec)[2]  # same position and pixels, a new SOP Instance UID
    assert twin.SOPInstanceUID != datasets[2].SOPInstanceUID
    same = assemble_volume(datasets + [twin], series_instance_uid=spec.series_instance_uid)
    assert same.shape[0] == 6 and twin.SOPInstanceUID in same.source_sop_instance_uids
    assert datasets[2].SOPInstanceUID not in same.source_sop_instance_uids
    assert [(w.kind, w.text) for w in same.warnings] == [(Kind.REPEATED_POSITION, "1 instances repeating a slice position dropped, the one received last kept (1 with identical pixel data, 0 with different pixel data)")]
    np.testing.assert_array_equal(same.hu, head_volume(spec)[0])

    changed = series_datasets(spec)[2]
    pixels = changed.pixel_array.copy()
    pixels[:] = 1024  # water everywhere: visibly not the first one
    changed.PixelData = pixels.tobytes()
    newer = assemble_volume(datasets + [changed], series_instance_uid=spec.series_instance_uid)
    assert [w.kind for w in newer.warnings] == [Kind.REPEATED_POSITION]
    assert newer.warnings[0].text.endswith("(0 with identical pixel data, 1 with different pixel data)")
    k = list(newer.source_sop_instance_uids).index(changed.SOPInstanceUID)
    assert np.all(newer.hu[k] == 0)


def test_missing_frame_of_reference_is_a_warning_not_a_failure():
    spec = small_spec(n_slices=6)
    datasets = series_datasets(spec)
    for ds in datasets:
        del ds.FrameOfReferenceUID
    volume = assemble_volume(datasets, series_instance_uid=spec.series_instance_uid)
    assert volume.frame_of_reference_uid is None
    assert [w.kind for w in volume.warnings] == [Kind.NO_FRAME_OF_REFERENCE]
    np.testing.assert_array_equal(volume.hu, head_volume(spec)[0])


def test_stray_instance_of_another_series_is_left_out_and_recorded():
    spec = small_spec(n_slices=6)
    other = small_spec(n_slices=2, study_instance_uid=spec.study_instance_uid, series_number=3)
    stray = series_datasets(other)[1]
    datasets = series_datasets(spec)
    volume = assemble_volume(datasets[:3] + [stray] + datasets[3:], series_instance_uid=spec.series_instance_uid)
    assert volume.excluded_sop_instance_uids == (stray.SOPInstanceUID,)
    assert [w.kind for w in volume.warnings] == [Kind.OTHER_SERIES]
    assert volume.shape[0] == 6
    assert stray.SOPInstanceUID not in volume.source_sop_instance_uids


def test_non_square_pixels_keep_their_real_spacing():
    spec = small_spec(rows=120, columns=150, pixel_spacing_mm=(2.0, 1.6))
    volume = assemble_volume(series_datasets(spec), series_instance_uid=spec.series_instance_uid)
    _, mask = head_volume(spec)
    assert volume.spacing_mm == pytest.approx((5.0, 2.0, 1.6))
    np.testing.assert_allclose(np.linalg.norm(volume.affine[:3, :3], axis=0), [5.0, 2.0, 1.6])
    assert mask.sum() * volume.voxel_volume_mm3 / 1000 == pytest.approx(lesion_volume_ml(spec, mask))
    np.testing.assert_allclose(lesion_centroid_mm(volume, mask), LESION.center_mm, atol=0.3)


def test_single_slice_takes_z_spacing_from_slice_thickness():
    spec = small_spec(n_slices=1, slice_thickness_mm=2.5, lesions=[])
    volume = assemble_volume(series_datasets(spec), series_instance_uid=spec.series_instance_uid)
    assert volume.shape == (1, 128, 128)
    assert volume.spacing_mm == pytest.approx((2.5, 1.8, 1.8))
    assert volume.voxel_volume_mm3 == pytest.approx(2.5 * 1.8 * 1.8)

    datasets = series_datasets(spec)
    del datasets[0].SliceThickness
    with pytest.raises(ValueError, match="SliceThickness"):
        assemble_volume(datasets, series_instance_uid=spec.series_instance_uid)


def test_fractional_rescale_gives_float32_and_padding_becomes_air():
    spec = small_spec(n_slices=2, rows=64, columns=64, pixel_spacing_mm=(3.6, 3.6), lesions=[])
    datasets = series_datasets(spec)
    for ds in datasets:
        ds.RescaleSlope = "0.5"
        ds.RescaleIntercept = "-1024.25"
        pixels = np.frombuffer(ds.PixelData, dtype=np.int16).copy()
        pixels[:3] = -2000  # padding outside the field of view
        ds.PixelData = pixels.tobytes()
    volume = assemble_volume(datasets, series_instance_uid=spec.series_instance_uid)
    assert volume.hu.dtype == np.float32
    stored = np.frombuffer(datasets[0].PixelData, dtype=np.int16).reshape(64, 64)
    expected = np.maximum(stored * 0.5 - 1024.25, -1024)
    np.testing.assert_allclose(volume.hu[0], expected)
    assert volume.hu[0, 0, :3].tolist() == [-1024.0] * 3


def test_missing_geometry_is_refused():
    spec = small_spec(n_slices=2)
    datasets = series_datasets(spec)
    del datasets[1].ImagePositionPatient
    with pytest.raises(ValueError, match="ImagePositionPatient"):
        assemble_volume(datasets, series_instance_uid=spec.series_instance_uid)


def test_no_instance_of_the_series_is_refused():
    spec = small_spec(n_slices=2)
    with pytest.raises(ValueError, match="no instance of series"):
        assemble_volume(series_datasets(spec), series_instance_uid="1.2.3")


def test_memory_is_the_volume_plus_a_few_frames(tmp_path):
    """Paths are decoded one at a time into a preallocated int16 array: no stacking copy."""
    import tracemalloc

    spec = SeriesSpec(n_slices=40, lesions=[])  # 512 x 512
    paths = write_series(spec, tmp_path)
    tracemalloc.start()
    volume = assemble_volume(paths, series_instance_uid=spec.series_instance_uid)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert volume.hu.nbytes == 40 * 512 * 512 * 2
    frame_float64 = 512 * 512 * 8
    assert peak < volume.hu.nbytes + 4 * frame_float64 + 4_000_000
