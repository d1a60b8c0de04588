"""The shared address (smtp.subject_address): the numbers of the Subject, parsed, checked at
DATA as RCPT checks a recipient, refused all or nothing (or partly), explained by mail to a
known sender. Real SMTP sessions (smtplib) against a real SmtpServer, SQLite and outbox."""

from __future__ import annotations

import asyncio
import smtplib
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import Config
from gateway.smtp.subject import MAX_NUMBERS, parse_subject
from tests import samples
from tests.conftest import merge
from tests.helpers import subject_of
from tests.servers.smtp import running_smtp

SENDER = "copier@example.com"
SHARED = "fax@fax.local"
CONFIG = {"smtp": {"subject_address": "fax", "allowed_senders": ["*@example.com"]}}


# -- parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "numbers", "rest"),
    [
        ("12015550123", ("12015550123",), ""),
        ("+1 201 555 0123", ("+1 201 555 0123",), ""),
        ("(201) 555-0123", ("(201) 555-0123",), ""),
        ("fax: 12015550123 Quarterly report", ("12015550123",), "Quarterly report"),
        ("Fax to: 12015550123, 12015550124 Report", ("12015550123", "12015550124"), "Report"),
        ("12015550123;12015550124", ("12015550123", "12015550124"), ""),
        ("12015550123 12015550124", ("12015550123", "12015550124"), ""),
        ("+1 201 555 0123 (201) 555-0124 Q3", ("+1 201 555 0123", "(201) 555-0124"), "Q3"),
        ("201 555 0123 201 555 0124", ("201 555 0123", "201 555 0124"), ""),
        ("12015550123 - Signed contract", ("12015550123",), "Signed contract"),
        ("to 2015550123: Invoice 42", ("2015550123",), "Invoice 42"),
        ("Quarterly report", (), "Quarterly report"),
        ("Fax report 2012", (), "Fax report 2012"),
        ("", (), ""),
    ],
)
def test_subject_forms(subject: str, numbers: tuple[str, ...], rest: str) -> None:
    """Every form the issue lists splits into its numbers (as written) and the fax's subject."""
    parsed = parse_subject(subject, default_country="US")
    assert parsed.numbers == numbers
    assert parsed.rest == rest


def test_a_typo_in_the_middle_stays_a_number_of_its_own() -> None:
    """A group that starts no possible number is one bad number; the next one is still read."""
    parsed = parse_subject("12015550123 201555 12015550124 Report", default_country="US")
    assert parsed.numbers == ("12015550123", "201555", "12015550124")
    assert parsed.rest == "Report"


def test_a_hostile_subject_of_digits_is_bounded() -> None:
    """Thousands of digit groups cost at most PARSES_PER_NUMBER look-ups per number the Subject
    may hold (well under a second of CPU at the most numbers, not the seconds eight per group
    took) and are at most that many numbers; a list of a thousand numbers, bare or in spaced
    groups, is still read whole."""
    hostile = ("1 " * 5000, " ".join(str(n % 10) for n in range(7, 35007, 7)))
    for subject in hostile:
        started = time.thread_time()  # this thread's CPU: a loaded machine stretches the wall
        parsed = parse_subject(subject, default_country="US")
        assert time.thread_time() - started < 1.5
        assert len(parsed.numbers) <= MAX_NUMBERS
        started = time.thread_time()
        parse_subject(subject, default_country="US", max_numbers=21)  # smtp.max_recipients 20
        assert time.thread_time() - started < 0.15
    bare = " ".join(str(12015550000 + n) for n in range(MAX_NUMBERS))
    spaced = " ".join(f"201 555 {n:04d}" for n in range(MAX_NUMBERS))
    for listed in (bare, spaced):
        assert len(parse_subject(listed, default_country="US").numbers) == MAX_NUMBERS


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("0123456789 +-().,;:/#faxtoR\u00e9\t"), max_size=80))
def test_any_subject_splits_into_numbers_and_a_rest(subject: str) -> None:
    """Whatever the Subject, parsing returns; the numbers and the rest come from its text."""
    parsed = parse_subject(subject, default_country="US")
    for number in parsed.numbers:
        assert number and all(group in subject for group in number.split())
    assert parsed.rest in subject


# -- real SMTP -----------------------------------------------------------------------------------


@pytest.fixture
def smtp(make_config: Callable[..., Config]) -> Callable[..., Any]:
    """tests/servers/smtp.py's server, with the shared address on."""

    def start(override: dict[str, Any] | None = None) -> Any:
        return running_smtp(make_config(merge(CONFIG, override or {})))

    return start


def send(
    port: int, subject: str, *, to: tuple[str, ...] = (SHARED,), sender: str = SENDER
) -> tuple[int, str]:
    """One message with a PDF; the DATA reply (code, text with its lines joined by '|')."""
    raw = samples.mail(samples.attachment(samples.pdf(1), "scan.pdf"), subject=subject)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("copier.example")
        assert client.mail(sender)[0] == 250
        for address in to:
            assert client.rcpt(address)[0] == 250, address
        code, text = client.data(raw)
    return code, text.decode().replace("\n", "|")


async def asend(port: int, subject: str, **kwargs: Any) -> tuple[int, str]:
    return await asyncio.to_thread(send, port, subject, **kwargs)


async def test_numbers_of_the_subject_are_faxed_and_the_rest_is_the_subject(
    smtp: Callable[..., Any],
) -> None:
    """Mail to fax@ with two numbers and words in its Subject is one job of two faxes whose
    subject is the words; nobody is mailed."""
    async with smtp() as gw:
        code, text = await asend(gw.port, "fax: +1 201 555 0123, (201) 555-0124 Quarterly report")
        assert code == 250 and text.startswith("2.0.0 queued as "), text
        [job] = await gw.jobs()
        assert job["recipients"] == ["+12015550123", "+12015550124"]
        assert job["subject"] == "Quarterly report"
        assert await gw.outbox() == []


async def test_one_bad_number_refuses_all_and_is_explained(smtp: Callable[..., Any]) -> None:
    """One blocked and one malformed number: 554 5.1.1 naming each and why, all or nothing
    said, no job, and one explanation mail to the (allowed) sender, threaded."""
    async with smtp() as gw:
        code, text = await asend(gw.port, "12015550123, 19005550123, 2015 Contract")
        assert code == 554, text
        lines = text.split("|")
        assert lines[0].startswith("5.1.1 Nothing was faxed") and "or to none" in lines[0]
        assert lines[1].startswith("5.1.1 19005550123: ") and "+1900" in lines[1]
        assert lines[2].startswith("5.1.1 2015: ") and "'2015'" in lines[2]
        assert await gw.jobs() == []
        [(recipients, mail)] = await gw.outbox()
        assert recipients == [SENDER]
        assert subject_of(mail).startswith("Fax not sent")
        body = mail.get_body(("plain",))
        assert body is not None
        content = body.get_content()
        assert "19005550123: numbers starting +1900 are blocked" in content
        assert "to all the numbers in its Subject or to none" in content
        assert mail["In-Reply-To"]


async def test_a_message_sent_again_is_explained_once(smtp: Callable[..., Any]) -> None:
    """The same refused message twice (a client retrying: same Message-ID) is one mail."""
    raw = samples.mail(samples.attachment(samples.pdf(1), "scan.pdf"), subject="19005550123")

    def go() -> int:
        with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
            client.ehlo("copier.example")
            client.mail(SENDER)
            client.rcpt(SHARED)
            return client.data(raw)[0]

    async with smtp() as gw:
        assert [await asyncio.to_thread(go) for _ in range(2)] == [554, 554]
        assert len(await gw.outbox()) == 1


async def test_subject_partial_faxes_the_numbers_that_pass(smtp: Callable[..., Any]) -> None:
    """With subject_partial the accepted numbers are faxed; the 250 names the refused ones and
    the sender is told by mail which numbers were not faxed."""
    async with smtp({"smtp": {"subject_partial": True}}) as gw:
        code, text = await asend(gw.port, "12015550123 442071838750 Invoice")
        assert code == 250, text
        lines = text.split("|")
        assert lines[0].startswith("2.0.0 Not faxed to 442071838750: ") and "GB" in lines[0]
        assert lines[-1].startswith("2.0.0 queued as J")
        [job] = await gw.jobs()
        assert job["recipients"] == ["+12015550123"]
        assert job["id"] == lines[-1].rsplit(" ", 1)[1]
        [(_, mail)] = await gw.outbox()
        assert subject_of(mail).startswith("Fax sent to only 1 of its numbers")
        body = mail.get_body(("plain",))
        assert body is not None and "Faxed to:     +1 201-555-0123" in body.get_content()


async def test_subject_partial_with_nothing_left_is_refused(smtp: Callable[..., Any]) -> None:
    """With subject_partial, a Subject whose every number is refused is still refused."""
    async with smtp({"smtp": {"subject_partial": True}}) as gw:
        code, text = await asend(gw.port, "19005550123")
        assert code == 554 and "No number in the Subject can be faxed" in text, text
        assert await gw.jobs() == []


async def test_no_number_in_the_subject(smtp: Callable[..., Any]) -> None:
    """A Subject without numbers is refused 554 5.1.1 saying how to write one, and explained."""
    async with smtp() as gw:
        code, text = await asend(gw.port, "Scan from the 2nd floor")
        assert code == 554 and text.startswith("5.1.1 No fax number in the Subject"), text
        assert len(await gw.outbox()) == 1


async def test_the_daily_limit_counts_subject_numbers(smtp: Callable[..., Any]) -> None:
    """Subject numbers count toward limits.faxes_per_sender_per_day as recipients do; past it
    the message gets 452 4.7.1 (it can pass later) and nothing is faxed."""
    async with smtp({"limits": {"faxes_per_sender_per_day": 2}}) as gw:
        assert (await asend(gw.port, "12015550123"))[0] == 250
        code, text = await asend(gw.port, "12015550124 12015550125")
        assert code == 452, text
        assert text.split("|")[1].startswith("4.7.1 12015550125: Daily limit of 2 faxes")
        assert len(await gw.jobs()) == 1
        # The refused message holds none of the limit: one more number still passes.
        assert (await asend(gw.port, "12015550124"))[0] == 250


async def test_max_recipients_applies_to_subject_numbers(smtp: Callable[..., Any]) -> None:
    """Past smtp.max_recipients, the further numbers of the Subject are refused by name."""
    async with smtp({"smtp": {"max_recipients": 2}}) as gw:
        code, text = await asend(gw.port, "12015550123 12015550124 12015550125")
        assert code == 554 and "12015550125: more than 2 numbers in one message" in text


async def test_duplicates_and_envelope_numbers_make_one_fax_each(
    smtp: Callable[..., Any],
) -> None:
    """A number written twice, or also in the envelope, is faxed once."""
    async with smtp() as gw:
        to = ("12015550123@fax.local", SHARED)
        code, _ = await asend(gw.port, "2015550123 +1 201 555 0124 12015550124 Hi", to=to)
        assert code == 250
        [job] = await gw.jobs()
        assert job["recipients"] == ["+12015550123", "+12015550124"]
        assert job["subject"] == "Hi"


async def test_no_explanation_to_a_stranger(smtp: Callable[..., Any]) -> None:
    """Without smtp.allowed_senders the envelope sender is unproven: refused, but not mailed
    (no backscatter)."""
    async with smtp({"smtp": {"allowed_senders": []}}) as gw:
        code, _ = await asend(gw.port, "19005550123", sender="someone@elsewhere.example")
        assert code == 554
        assert await gw.outbox() == []


async def test_document_refusals_of_shared_address_mail_are_explained(
    smtp: Callable[..., Any],
) -> None:
    """A copier's mail refused for its document (no attachment) is explained too."""
    async with smtp() as gw:
        raw = samples.mail(subject="12015550123")

        def go() -> tuple[int, bytes]:
            with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
                client.ehlo("copier.example")
                client.mail(SENDER)
                client.rcpt(SHARED)
                return client.data(raw)

        code, _ = await asyncio.to_thread(go)
        assert code == 554
        [(_, mail)] = await gw.outbox()
        body = mail.get_body(("plain",))
        assert body is not None and "nothing to fax" in body.get_content()


async def test_shared_address_off_by_default(make_config: Callable[..., Config]) -> None:
    """Without smtp.subject_address, fax@ is an address like any other: not a number, 550."""
    async with running_smtp(make_config()) as gw:

        def go() -> tuple[int, bytes]:
            with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
                client.ehlo("copier.example")
                client.mail(SENDER)
                return client.rcpt(SHARED)

        code, _ = await asyncio.to_thread(go)
        assert code == 550
