"""Relay and toll-fraud policy decisions, and the reply texts, without a server."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import pytest

from gateway.config import Config
from gateway.smtp import replies
from gateway.smtp.policy import Recipient, Refusal, RelayPolicy, client_ip
from gateway.smtp.replies import Reason

LOCAL = ipaddress.ip_address("127.0.0.1")
OUTSIDE = ipaddress.ip_address("198.51.100.7")


@pytest.fixture
def policy(make_config: Callable[..., Config]) -> Callable[..., RelayPolicy]:
    def build(override: dict[str, Any] | None = None, auth: bool = False) -> RelayPolicy:
        return RelayPolicy(make_config(override), auth_available=auth)

    return build


def refusal(result: object) -> Refusal:
    assert isinstance(result, Refusal), result
    return result


def accepted(result: object) -> str | None:
    """The number of an accepted recipient (None: the shared subject address)."""
    assert isinstance(result, Recipient), result
    return result.number


def test_client_ip_understands_socket_addresses() -> None:
    """IPv4, IPv6 with zone, IPv4-mapped IPv6 and non-IP peers are read correctly."""
    assert client_ip(("192.0.2.1", 2525)) == ipaddress.ip_address("192.0.2.1")
    assert client_ip(("fe80::1%eth0", 25, 0, 2)) == ipaddress.ip_address("fe80::1")
    assert client_ip(("::ffff:10.1.2.3", 25, 0, 0)) == ipaddress.ip_address("10.1.2.3")
    assert client_ip("/run/socket") is None
    assert client_ip(None) is None


def test_local_network_may_send(policy: Callable[..., RelayPolicy]) -> None:
    """The default allowed_networks let loopback submit without AUTH."""
    assert policy().check_mail("alice@example.com", LOCAL, None) is None


def test_outside_network_refused_with_550_without_auth(
    policy: Callable[..., RelayPolicy],
) -> None:
    """Without AUTH on offer, a foreign client gets 550 5.7.1 naming its address."""
    result = refusal(policy().check_mail("alice@example.com", OUTSIDE, None))
    assert result.reason is Reason.NETWORK_DENIED
    assert result.reply.startswith("550 5.7.1 ")
    assert "198.51.100.7" in result.reply


def test_outside_network_told_to_authenticate_when_auth_exists(
    policy: Callable[..., RelayPolicy],
) -> None:
    """With AUTH on offer, a foreign client gets 530 5.7.0 and may log in."""
    result = refusal(policy(auth=True).check_mail("alice@example.com", OUTSIDE, None))
    assert result.reply == "530 5.7.0 Authentication required"
    assert policy(auth=True).check_mail("alice@example.com", OUTSIDE, "scanner") is None


def test_allowed_senders_are_case_insensitive_globs(policy: Callable[..., RelayPolicy]) -> None:
    """allowed_senders patterns match whatever the case; others get 550 5.7.1."""
    rules = policy({"smtp": {"allowed_senders": ["*@Example.COM", "boss@other.org"]}})
    assert rules.check_mail("Alice@EXAMPLE.com", LOCAL, None) is None
    assert rules.check_mail("boss@other.org", LOCAL, None) is None
    result = refusal(rules.check_mail("eve@evil.example", LOCAL, None))
    assert result.reason is Reason.SENDER_DENIED
    assert result.reply.startswith("550 5.7.1 ")


def test_sender_must_be_a_whole_address(policy: Callable[..., RelayPolicy]) -> None:
    """A sender without a domain cannot get reports back and is refused."""
    assert refusal(policy().check_mail("postmaster", LOCAL, None)).reason is Reason.SENDER_DENIED


def test_a_fax_address_cannot_be_a_sender(policy: Callable[..., RelayPolicy]) -> None:
    """<number>@smtp.domain as sender is refused: its reports would come back to be faxed."""
    result = refusal(policy().check_mail("12015550123@FAX.local", LOCAL, None))
    assert result.reason is Reason.SENDER_DENIED
    assert result.reply.startswith("550 5.7.1 ") and "fax address" in result.reply


def test_login_that_is_an_address_sends_only_as_itself(
    policy: Callable[..., RelayPolicy],
) -> None:
    """alice@example.com may not send as bob; a service login may send as any allowed sender."""
    rules = policy(auth=True)
    assert rules.check_mail("ALICE@example.com", OUTSIDE, "alice@example.com") is None
    result = refusal(rules.check_mail("bob@example.com", OUTSIDE, "alice@example.com"))
    assert result.reason is Reason.SENDER_NOT_USER
    assert rules.check_mail("bob@example.com", OUTSIDE, "scanner") is None


def test_foreign_domain_is_relaying(policy: Callable[..., RelayPolicy]) -> None:
    """A recipient outside smtp.domain is refused as relaying, 550 5.7.1."""
    result = refusal(policy().parse_recipient("2015550123@example.com"))
    assert result.reason is Reason.RELAY_DENIED
    assert result.reply.startswith("550 5.7.1 Relaying denied")


def test_domain_compared_without_case(policy: Callable[..., RelayPolicy]) -> None:
    """FAX.Local is the same domain as fax.local."""
    assert accepted(policy().parse_recipient("12015550123@FAX.Local")) == "+12015550123"


def test_national_and_quoted_numbers_become_e164(policy: Callable[..., RelayPolicy]) -> None:
    """National numbers of the default country and quoted local parts parse to E.164."""
    rules = policy()
    assert accepted(rules.parse_recipient("2015550123@fax.local")) == "+12015550123"
    assert accepted(rules.parse_recipient('"+1 (201) 555-0123"@fax.local')) == "+12015550123"


def test_invalid_number_gives_its_reason(policy: Callable[..., RelayPolicy]) -> None:
    """A local part that is no number is 550 5.1.1 with the parser's reason."""
    result = refusal(policy().parse_recipient("sales@fax.local"))
    assert result.reason is Reason.BAD_NUMBER
    assert result.reply.startswith("550 5.1.1 ")
    assert "'sales' is not a fax number" in result.reply


def test_blocked_prefix_refused(policy: Callable[..., RelayPolicy]) -> None:
    """+1900 numbers are refused by the default blocked prefixes, naming the prefix."""
    result = refusal(policy().parse_recipient("19005550123@fax.local"))
    assert result.reason is Reason.BLOCKED_PREFIX
    assert result.reply.startswith("550 5.7.1 ")
    assert "+1900" in result.reply


def test_premium_rate_refused_even_without_prefix(policy: Callable[..., RelayPolicy]) -> None:
    """A premium-rate number is refused although no blocked prefix covers it."""
    rules = policy({"fax": {"allowed_countries": ["GB"], "blocked_prefixes": []}})
    result = refusal(rules.parse_recipient("+448712345678@fax.local"))
    assert result.reason is Reason.PREMIUM_RATE
    assert accepted(rules.parse_recipient("+442071838750@fax.local")) == "+442071838750"


@pytest.mark.parametrize("number", ["+4990012345670", "+44901234567", "+398991234560"])
def test_premium_rate_prefix_refused_in_both_modes(
    policy: Callable[..., RelayPolicy], number: str
) -> None:
    """An unassigned number in a premium range gets the same premium-rate 550 in both modes."""
    answers = []
    for mode in ("strict", "possible"):
        rules = policy({"fax": {"number_check": mode, "allowed_countries": ["*"]}})
        result = refusal(rules.parse_recipient(f"{number}@fax.local"))
        assert result.reason is Reason.PREMIUM_RATE, (mode, result)
        answers.append(result.reply)
    assert answers[0] == answers[1] == f"550 5.7.1 {number} is a premium-rate number"
    # An ordinary number of the same countries still goes through, in either mode.
    loose = policy({"fax": {"number_check": "possible", "allowed_countries": ["*"]}})
    for ordinary in ("+49301234567", "+442071838750", "+390612345678"):
        assert accepted(loose.parse_recipient(f"{ordinary}@fax.local")) == ordinary


def test_disallowed_country_refused(policy: Callable[..., RelayPolicy]) -> None:
    """By default only the default country is allowed; the reply names the countries."""
    result = refusal(policy().parse_recipient("+442071838750@fax.local"))
    assert result.reason is Reason.COUNTRY_DENIED
    assert "GB" in result.reply and "US only" in result.reply


def test_canada_is_not_the_us(policy: Callable[..., RelayPolicy]) -> None:
    """NANP numbers are judged by their real region: a Canadian number is not 'US'."""
    assert refusal(policy().parse_recipient("16135550123@fax.local")).reason is (
        Reason.COUNTRY_DENIED
    )
    rules = policy({"fax": {"allowed_countries": ["US", "CA"]}})
    assert accepted(rules.parse_recipient("16135550123@fax.local")) == "+16135550123"


def test_star_allows_any_country_but_not_blocked_prefixes(
    policy: Callable[..., RelayPolicy],
) -> None:
    """allowed_countries = ['*'] opens every country, the blocked prefixes still apply."""
    rules = policy({"fax": {"allowed_countries": ["*"]}})
    assert accepted(rules.parse_recipient("+33142685300@fax.local")) == "+33142685300"
    assert refusal(rules.parse_recipient("+870773111632@fax.local")).reason is (
        Reason.BLOCKED_PREFIX
    )


def test_non_geographic_number_named_as_such(policy: Callable[..., RelayPolicy]) -> None:
    """A non-geographic number outside an allowed country says so in the reply."""
    rules = policy({"fax": {"blocked_prefixes": []}})
    result = refusal(rules.parse_recipient("+870773111632@fax.local"))
    assert result.reason is Reason.COUNTRY_DENIED
    assert "non-geographic" in result.reply


def test_possible_check_accepts_fictional_numbers(policy: Callable[..., RelayPolicy]) -> None:
    """number_check = 'possible' lets lab numbers through that strict checking refuses."""
    assert isinstance(policy().parse_recipient("5555550123@fax.local"), Refusal)
    loose = policy({"fax": {"number_check": "possible"}})
    assert accepted(loose.parse_recipient("5555550123@fax.local")) == "+15555550123"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("250 OK", "250 2.0.0 OK"),
        ("503 Error: need RCPT command", "503 5.5.1 Error: need RCPT command"),
        ("552 Error: Too much mail data", "552 5.3.4 Error: Too much mail data"),
        ("535 5.7.8 Authentication credentials invalid", None),
        ("250 2.0.0 queued as abc", None),
        ("354 End data with <CR><LF>.<CR><LF>", None),
        ("221 Bye", "221 2.0.0 Bye"),
        ("599 Strange", "599 5.0.0 Strange"),
    ],
)
def test_enhanced_codes_added_where_missing(raw: str, expected: str | None) -> None:
    """Replies without an RFC 3463 code get one; those with one, and 3xx, stay as they are."""
    result = replies.with_enhanced_code(raw)
    assert result == (raw if expected is None else expected)


def test_reply_text_is_one_safe_line() -> None:
    """Untrusted text in a reply loses CR/LF and undecodable characters and is bounded."""
    text = replies.one_line("bad\r\n250 fake\udcff" + "x" * 1000)
    assert "\r" not in text and "\n" not in text
    text.encode("utf-8")  # would raise on a lone surrogate
    assert len(text) <= 400
