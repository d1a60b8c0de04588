"""The fax error table: complete, described, and split into worth-retrying and not."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.carrier.faxerrors import FAX_ERRORS, describe

API_DOC = Path("/work/shared/voxtelesys-fax-api.txt")


@pytest.mark.skipif(not API_DOC.exists(), reason="the carrier documentation is not at hand")
def test_table_matches_the_documentation() -> None:
    """Every code and description of the documented table is in ours, and nothing else."""
    text = API_DOC.read_text()
    section = text[text.index("Fax Errors") :]
    documented = {
        int(code): description.strip()
        for code, description in re.findall(r"^(\d{4}) \| (.+?) \|$", section, re.MULTILINE)
    }
    assert len(documented) == 83
    assert documented == FAX_ERRORS


@pytest.mark.parametrize(
    ("code", "retryable"),
    [
        (5109, True),  # far end not able to receive: busy, no fax tone
        (5121, True),  # no response after a page
        (5148, True),
        (5149, True),
        (5300, True),
        (5314, True),
        (4203, True),
        (5100, True),
        (4201, False),
        (4202, False),
        (5141, False),
        (5146, False),
        (5108, False),
        (5156, False),
    ],
)
def test_retry_advice(code: int, retryable: bool) -> None:
    """Line and carrier problems are worth retrying; document and far-end policy ones are not."""
    info = describe(code)
    assert info.code == code
    assert info.retryable is retryable
    assert info.description == FAX_ERRORS[code]


def test_unknown_codes_still_answer() -> None:
    """Unknown codes get a readable description; 42xx unknowns are document problems."""
    assert describe(9999) == (9999, "unknown fax error 9999", True)
    assert describe(4299).retryable is False
    assert describe("5109") == describe(5109)
    assert describe(None).retryable is True
    assert describe("").code is None
    assert describe("abc").description == "unknown fax error 'abc'"
