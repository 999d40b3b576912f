"""The one place that says what a UID may look like, for each role a UID plays."""

from __future__ import annotations

import pytest

from dicom_node.uid_syntax import is_plain_uid, is_receivable_uid, is_valid_uid, is_valid_uid_root


@pytest.mark.parametrize("uid", ["1.2.840.10008.5.1.4.1.1.2", "0", "1.0.2", "1." + "2" * 62])
def test_valid_uids(uid: str) -> None:
    assert is_valid_uid(uid)


@pytest.mark.parametrize(
    ("uid", "why"),
    [
        ("1.2.840.099.2", "a leading zero"),
        ("1.2.", "a final dot"),
        ("1..2", "an empty component"),
        ("1.2.3\n", "a trailing newline (pydicom's UID.is_valid lets this through)"),
        ("1.2 ", "padding"),
        ("1." + "2" * 63, "65 characters"),
        ("", "empty"),
        ("1.2.٣", "a non-ASCII digit"),
    ],
)
def test_invalid_uids(uid: str, why: str) -> None:
    assert not is_valid_uid(uid), why


def test_a_root_may_end_with_a_dot_but_not_otherwise_break_the_syntax() -> None:
    assert is_valid_uid_root("1.2.826.0.1.3680043.10.999")
    assert is_valid_uid_root("1.2.826.0.1.3680043.10.999.")
    assert not is_valid_uid_root("1.2..")
    assert not is_valid_uid_root("1.02.")
    assert not is_valid_uid_root("")


def test_what_a_peer_sends_is_accepted_when_printable_and_short_enough() -> None:
    assert is_receivable_uid("1.2.840.099.2.3")  # leading zeros: common in real archives
    assert is_receivable_uid("x" * 64)
    assert not is_receivable_uid("x" * 65)
    assert not is_receivable_uid("1.2 3")  # a space inside
    assert not is_receivable_uid("1.2\x00")
    assert not is_receivable_uid("")


def test_a_plain_uid_is_digits_and_dots_leading_zeros_tolerated() -> None:
    assert is_plain_uid("1.2.840.099.2.3")
    assert not is_plain_uid("../1.2")
    assert not is_plain_uid("1..2")
    assert not is_plain_uid("1" * 65)


def test_the_configured_root_is_checked_by_the_same_rule() -> None:
    from pydantic import ValidationError

    from dicom_node.config import IdentitySettings

    assert IdentitySettings(uid_root="1.2.826.0.1.3680043.10.999").uid_root == "1.2.826.0.1.3680043.10.999."
    assert IdentitySettings(uid_root="1.2.826.0.1.3680043.10.999.").uid_root == "1.2.826.0.1.3680043.10.999."
    for bad in ("1.02.3", "1..2", "1.2.3\n", "abc"):
        with pytest.raises(ValidationError, match="dot-separated digits without leading zeros"):
            IdentitySettings(uid_root=bad)
