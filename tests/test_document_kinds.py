"""Recognising faxable documents by their bytes."""

from __future__ import annotations

import pytest

from gateway.document.kinds import (
    FAXABLE_TYPES,
    MAX_TIFF_FRAMES,
    claimed_type,
    extension,
    sniff,
    tiff_frames,
)
from tests import samples


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (samples.pdf(), "application/pdf"),
        (samples.corrupt_pdf(), "application/pdf"),
        (samples.encrypted_pdf(), "application/pdf"),
        (samples.png(), "image/png"),
        (samples.png(mode="RGBA"), "image/png"),
        (samples.jpeg(), "image/jpeg"),
        (samples.tiff(2), "image/tiff"),
        (samples.tiff(1, compression="group3"), "image/tiff"),
    ],
)
def test_sniff_recognises_faxable_formats(data: bytes, expected: str) -> None:
    """Each faxable format is recognised from its magic bytes."""
    assert sniff(data) == expected


@pytest.mark.parametrize(
    "data",
    [b"", b"%PD", samples.gif(), samples.docx(), samples.text_file(), b"\x00" * 64, b"II+\x00"],
)
def test_sniff_rejects_other_bytes(data: bytes) -> None:
    """GIF, Word, text, BigTIFF and empty data are not faxable."""
    assert sniff(data) is None


def test_sniff_tolerates_junk_before_pdf_header_within_1024_bytes() -> None:
    """A PDF header after a little junk is still a PDF, as Acrobat treats it; far later is not."""
    assert sniff(b"\xef\xbb\xbf" + samples.pdf()) == "application/pdf"
    assert sniff(b"x" * 1100 + samples.pdf()) is None


def test_faxable_types_are_the_four_carrier_formats() -> None:
    """The faxable types are exactly PDF, TIFF, PNG and JPEG, in that order."""
    assert FAXABLE_TYPES == ("application/pdf", "image/tiff", "image/png", "image/jpeg")


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/pdf", ".pdf"),
        ("image/tiff", ".tif"),
        ("image/png", ".png"),
        ("image/jpeg", ".jpg"),
        ("Application/PDF; name=x.pdf", ".pdf"),
        ("application/zip", ".bin"),
    ],
)
def test_extension(content_type: str, expected: str) -> None:
    """Extensions follow the type, ignoring case and parameters; unknown types get .bin."""
    assert extension(content_type) == expected


def test_claimed_type_uses_declared_type_then_filename() -> None:
    """A declared faxable type wins, else the filename's extension, else nothing."""
    assert claimed_type("image/jpg", None) == "image/jpeg"
    assert claimed_type("application/octet-stream", "Scan.PDF") == "application/pdf"
    assert claimed_type("application/octet-stream", "photo.jpeg") == "image/jpeg"
    assert claimed_type("application/msword", "letter.doc") is None
    assert claimed_type(None, "noextension") is None


@pytest.mark.parametrize(
    ("data", "frames"),
    [
        (samples.tiff(3), 3),
        (samples.tiff_chain(7), 7),
        (samples.tiff_chain(7, byte_order=">"), 7),
        (samples.tiff_chain(7, big=True), 7),
        (samples.tiff_chain(7, big=True, byte_order=">"), 7),
        (samples.tiff_chain(7, cycle=True), 7),
    ],
)
def test_tiff_frames_walks_the_ifd_chain(data: bytes, frames: int) -> None:
    """Frames are counted along the IFD chain in either byte order, BigTIFF too, cycles once."""
    assert tiff_frames(data) == frames


def test_tiff_frames_stops_past_its_limit_and_at_damage() -> None:
    """The walk ends one frame past `limit`, at a truncated IFD, and on bytes that are no TIFF."""
    chain = samples.tiff_chain(50)
    assert tiff_frames(chain, limit=10) == 11
    assert tiff_frames(chain[: len(chain) // 2]) == 24  # the IFDs before the cut
    assert tiff_frames(b"II*\x00\xff\xff\xff\xff") == 0  # first IFD outside the file
    assert tiff_frames(samples.pdf()) is None
    assert tiff_frames(b"II") is None
    assert MAX_TIFF_FRAMES == 65_535
