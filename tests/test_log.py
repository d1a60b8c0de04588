"""Logging: JSON lines, bound context, and secrets that never reach the log."""

from __future__ import annotations

import io
import json
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import log


@pytest.fixture
def stream() -> io.StringIO:
    out = io.StringIO()
    log.configure("debug", stream=out, json=True)
    return out


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_with_bound_context(stream: io.StringIO) -> None:
    """Every line logged inside a bound context carries its id."""
    with log.bound(job_id="J123"):
        log.get_logger().info("job.received", pages=3)
    [line] = lines(stream)
    assert line["event"] == "job.received"
    assert line["job_id"] == "J123"
    assert line["level"] == "info"


def test_registered_secrets_are_redacted(stream: io.StringIO) -> None:
    """A registered secret is replaced wherever it appears, in any key or message."""
    log.register_secrets(["super-secret-api-key-42"])
    log.get_logger().info("carrier.request", detail="auth failed for super-secret-api-key-42")
    text = stream.getvalue()
    assert "super-secret-api-key-42" not in text
    assert "<SECRET>" in text


def test_secret_keys_and_patterns_are_redacted(stream: io.StringIO) -> None:
    """Passwords, bearer tokens, presigned-URL signatures and webhook tokens are never logged."""
    logger = log.get_logger()
    logger.info("relay.login", password="hunter2hunter2")
    logger.info("carrier.call", headers={"Authorization": "Bearer abc.def-123"})
    logger.info(
        "storage.url",
        url="http://s3/bucket/key?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIA/x&X-Amz-Signature=deadbeef",
    )
    logger.info("webhook.request", path="/webhooks/fax/my-webhook-token-1234/x")
    logger.info("media.request", path="/media/abc.def.sig")
    text = stream.getvalue()
    for secret in [
        "hunter2hunter2",
        "abc.def-123",
        "deadbeef",
        "AKIA/x",
        "my-webhook-token-1234",
        "abc.def.sig",
    ]:
        assert secret not in text, secret


def test_stdlib_logging_is_redacted(stream: io.StringIO) -> None:
    """Library logs through the stdlib pass the same redaction."""
    log.register_secrets(["library-leaked-secret"])
    logging.getLogger("botocore").warning("oops library-leaked-secret Bearer zzz")
    text = stream.getvalue()
    assert "library-leaked-secret" not in text
    assert "zzz" not in text


def _redacted_by_every_pattern(text: str) -> str:
    """What redaction makes of `text` when every pattern runs on every value (no shortcut)."""
    for secret in log._by_length:
        text = text.replace(secret, log.REDACTED)
    for pattern in log._PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + log.REDACTED, text)
    return text


_FRAGMENTS = st.sampled_from(
    [
        "Bearer ",
        "bearer\tabc",
        "X-AMZ-SIGNATURE=",
        "x-amz-credential=",
        "X-Amz-Security-Token=",
        "Signature=",
        "/media/",
        "/webhooks/fax/",
        "PassWord=",
        "passwd: ",
        "API_KEY=",
        "apikey'",
        "Secret:",
        "token=",
        "=",
        ":",
        "'",
        '"',
        " ",
        "&",
        "/",
        "abc",
        "XYZ.9-~",
        "é",
    ]
)


@given(st.lists(_FRAGMENTS, max_size=12).map("".join))
@settings(max_examples=400, deadline=None)
def test_the_shortcut_past_the_patterns_changes_nothing(text: str) -> None:
    """Values redact exactly as if every pattern ran on each, although most are not scanned."""
    assert log.redact(text) == _redacted_by_every_pattern(text)


def test_bound_values_are_restored_after_the_block(stream: io.StringIO) -> None:
    """`bound` puts back each key's earlier value (or none) when its block ends."""
    logger = log.get_logger()
    with log.bound(job_id="outer"):
        with log.bound(job_id="inner", fax_id=7):
            logger.info("one")
        logger.info("two")
    logger.info("three")
    one, two, three = lines(stream)
    assert (one["job_id"], one["fax_id"]) == ("inner", 7)
    assert two["job_id"] == "outer" and "fax_id" not in two
    assert "job_id" not in three and "fax_id" not in three
