"""Derived UIDs: valid per PS3.5 9.1, deterministic, and distinct where they must be."""

from __future__ import annotations

import re

import pytest
from pydicom.uid import UID

from dicom_node.config import IdentitySettings
from dicom_node.outputs.uids import (
    KEY_IMAGES,
    SEG,
    SR,
    JobUids,
    derived_uid,
    device_observer_uid,
)
from dicom_node.uid_syntax import is_valid_uid

ROOT = IdentitySettings().uid_root
#: A root of 40 characters, the longest the config accepts (plus its trailing dot).
LONGEST_ROOT = "1.2.3.4.5.6.7.8.9.10.11.12.13.14.15.1617."
COMPONENT = re.compile(r"0|[1-9][0-9]*")


def _assert_valid(uid: str, root: str) -> None:
    assert len(uid) <= 64
    assert uid.startswith(root if root.endswith(".") else root + ".")
    assert all(COMPONENT.fullmatch(c) for c in uid.split(".")), uid
    assert UID(uid).is_valid
    assert is_valid_uid(uid)


@pytest.mark.parametrize("root", [ROOT, ROOT.rstrip("."), LONGEST_ROOT, "2.25"])
def test_derived_uids_are_valid(root: str) -> None:
    for n in range(500):
        _assert_valid(derived_uid(root, "job", str(n)), root)


def test_the_longest_config_root_is_accepted_and_still_fills_64_characters() -> None:
    assert len(LONGEST_ROOT) == 41
    IdentitySettings(uid_root=LONGEST_ROOT.rstrip("."))  # the config accepts it
    lengths = {len(derived_uid(LONGEST_ROOT, str(n))) for n in range(200)}
    assert max(lengths) == 64


def test_same_parts_give_the_same_uid_and_the_trailing_dot_does_not_matter() -> None:
    assert derived_uid(ROOT, "job-1", "seg") == derived_uid(ROOT, "job-1", "seg")
    assert derived_uid(ROOT, "job-1", "seg") == derived_uid(ROOT.rstrip("."), "job-1", "seg")


def test_different_parts_give_different_uids() -> None:
    uids = {derived_uid(ROOT, "job", str(n)) for n in range(2000)}
    assert len(uids) == 2000
    assert derived_uid(ROOT, "ab", "c") != derived_uid(ROOT, "a", "bc")


def test_a_fixed_input_keeps_its_uid_across_versions() -> None:
    """Changing the derivation would turn every resend after an upgrade into a duplicate."""
    assert derived_uid("1.2.826.0.1.3680043.10.1476.", "job-1", "seg") == (
        "1.2.826.0.1.3680043.10.1476.966070039864504958317243995000017096"
    )


#: Leading zero, empty component, letter, empty, leading dot, and too long to leave 20 digits.
BAD_ROOTS = ["1.02.3", "1..2", "1.2.a", "", ".1.2", "1.2.3.4.5.6.7.8.9.10.11.12.13.14.15.16.17.18"]


@pytest.mark.parametrize("root", BAD_ROOTS)
def test_bad_roots_are_refused(root: str) -> None:
    with pytest.raises(ValueError, match="UID root"):
        derived_uid(root, "job")


def test_at_least_one_part_is_required() -> None:
    with pytest.raises(ValueError, match="at least one part"):
        derived_uid(ROOT)


def test_job_uids_are_distinct_per_object_and_stable_per_job() -> None:
    first, again, other = JobUids(ROOT, "job-1"), JobUids(ROOT, "job-1"), JobUids(ROOT, "job-2")
    made = [
        first.series(SEG),
        first.series(SR),
        first.series(KEY_IMAGES),
        first.instance(SEG),
        first.instance(SR),
        first.instance(KEY_IMAGES, 1),
        first.instance(KEY_IMAGES, 2),
        first.dimension_organization(SEG),
        first.tracking(1),
        first.tracking(2),
        device_observer_uid(ROOT),
    ]
    assert len(set(made)) == len(made)
    for uid in made:
        _assert_valid(uid, ROOT)
    assert first.instance(SEG) == again.instance(SEG)
    assert first.tracking(2) == again.tracking(2)
    assert first.instance(SEG) != other.instance(SEG)
    assert device_observer_uid(ROOT) == device_observer_uid(ROOT)


def test_job_uids_refuse_bad_input() -> None:
    with pytest.raises(ValueError, match="job_key"):
        JobUids(ROOT, "")
    with pytest.raises(ValueError, match="UID root"):
        JobUids("1.02", "job")
    with pytest.raises(ValueError, match="start at 1"):
        JobUids(ROOT, "job").instance(SEG, 0)
    with pytest.raises(ValueError, match="start at 1"):
        JobUids(ROOT, "job").tracking(0)
