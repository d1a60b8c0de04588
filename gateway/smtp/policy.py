"""Who may send faxes through the gateway, and to which numbers: relay and toll-fraud rules.

Pure decisions on configuration and addresses, no I/O: the handler asks, gets None (allowed) or
a Refusal with the reply to give and the reason to log. The daily limit needs the store and
lives in the handler.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from dataclasses import dataclass
from typing import Any

import phonenumbers

from gateway import numbers
from gateway.config import Config
from gateway.smtp import replies
from gateway.smtp.options import MessageOptions, OptionError, split_options
from gateway.smtp.replies import Reason

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Refusal:
    """A deliberate no: the SMTP reply and the reason name for logs and metrics."""

    reason: Reason
    reply: str


@dataclass(frozen=True)
class Recipient:
    """An accepted RCPT: its E.164 number (None for the shared subject address), its options."""

    number: str | None
    options: MessageOptions


def client_ip(peer: Any) -> IPAddress | None:
    """The client's IP from aiosmtpd's `session.peer` (a socket address tuple), if it has one."""
    if not isinstance(peer, tuple) or not peer or not isinstance(peer[0], str):
        return None
    host = peer[0].split("%", 1)[0]  # drop an IPv6 zone ("fe80::1%eth0")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    # A dual-stack listener on "::" shows IPv4 clients as ::ffff:a.b.c.d; allowed_networks are
    # written in plain IPv4.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class RelayPolicy:
    """The rules of one configuration. `auth_available`: AUTH can be offered at all."""

    def __init__(self, config: Config, *, auth_available: bool) -> None:
        self.config = config
        self.auth_available = auth_available
        self._senders = tuple(pattern.lower() for pattern in config.smtp.allowed_senders)
        self._strict = config.fax.number_check == "strict"

    def network_allowed(self, ip: IPAddress | None) -> bool:
        return ip is not None and any(ip in net for net in self.config.smtp.allowed_networks)

    def check_mail(
        self, sender: str, ip: IPAddress | None, auth_user: str | None
    ) -> Refusal | None:
        """MAIL FROM: may this session submit at all, and as this sender?"""
        if auth_user is None and not self.network_allowed(ip):
            if self.auth_available:
                return Refusal(Reason.AUTH_REQUIRED, replies.AUTH_REQUIRED)
            return Refusal(Reason.NETWORK_DENIED, replies.network_denied(str(ip or "unknown")))
        if not _is_text(sender):
            # Undecodable bytes (kept by aiosmtpd as lone surrogates) could be neither stored
            # nor mailed a report: the same message would get 451 forever.
            return Refusal(
                Reason.SENDER_DENIED, replies.bad_sender_syntax(sender, "is not valid UTF-8")
            )
        local, at, domain = sender.rpartition("@")
        if not at or not local or not domain:
            # Reports of the outcome go back to this address: it has to be a whole one.
            return Refusal(Reason.SENDER_DENIED, replies.sender_denied(sender))
        if domain.lower() == self.config.smtp.domain:
            # Reports go back to the sender through the relay, which brings mail for this domain
            # here: the gateway would fax its own report, a loop that costs a call each time.
            return Refusal(
                Reason.SENDER_DENIED,
                replies.sender_denied(sender, "is a fax address: faxes cannot come from one"),
            )
        lowered = sender.lower()
        if self._senders and not any(fnmatch.fnmatchcase(lowered, p) for p in self._senders):
            return Refusal(Reason.SENDER_DENIED, replies.sender_denied(sender))
        # A login that is an email address may send only as itself; a login that is not (a
        # scanner's or an application's service account) may use any allowed sender. The users
        # file has no per-user address list, and people log in with their address, so this keeps
        # one person from sending (and spending daily limit, and getting reports) as another
        # without another file to keep in sync.
        if auth_user is not None and "@" in auth_user and auth_user.lower() != lowered:
            return Refusal(Reason.SENDER_NOT_USER, replies.sender_not_user(auth_user, sender))
        return None

    def parse_recipient(self, address: str) -> Recipient | Refusal:
        """RCPT TO: `<number>[+options]@<smtp.domain>`, or the shared subject address (number
        None) with its options; or why it is refused."""
        local, at, domain = address.rpartition("@")
        if not at or domain.lower() != self.config.smtp.domain:
            return Refusal(Reason.RELAY_DENIED, replies.relay_denied(self.config.smtp.domain))
        if len(local) >= 2 and local.startswith('"') and local.endswith('"'):
            local = local[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        try:
            local, options = split_options(local)
        except OptionError as exc:
            return Refusal(Reason.UNKNOWN_OPTION, replies.bad_option(str(exc)))
        shared = self.config.smtp.subject_address
        if shared is not None and local.lower() == shared:
            return Recipient(None, options)
        number = self.check_number(local)
        return number if isinstance(number, Refusal) else Recipient(number, options)

    def check_number(self, local: str) -> str | Refusal:
        """A fax number as written (an address's local part, a number in a Subject): its
        E.164 form if it may be dialled, else why not (the toll-fraud guard included)."""
        country = self.config.smtp.default_country
        try:
            number = numbers.read_fax_number(local, country, strict=self._strict)
        except numbers.NumberError as exc:
            return self._toll_fraud_refusal(local) or Refusal(
                Reason.BAD_NUMBER, replies.bad_number(str(exc))
            )
        refusal = self._destination_refusal(number)
        return refusal if refusal is not None else number.e164

    def _toll_fraud_refusal(self, local: str) -> Refusal | None:
        """For a number strict checking refused: the blocked-prefix or premium-rate refusal its
        lenient reading gets, so an unassigned premium number is answered the same way in both
        modes ("is a premium-rate number", not "not assigned" here and the former there)."""
        if not self._strict:
            return None
        try:
            e164 = numbers.parse_fax_number(local, self.config.smtp.default_country, strict=False)
        except numbers.NumberError:
            return None
        refusal = self.check_destination(e164)
        if refusal is not None and refusal.reason in (Reason.BLOCKED_PREFIX, Reason.PREMIUM_RATE):
            return refusal
        return None

    def check_destination(self, e164: str) -> Refusal | None:
        """The toll-fraud guard: blocked prefixes, premium rate, allowed countries."""
        return self._destination_refusal(numbers.known_number(e164))

    def _destination_refusal(self, number: numbers.FaxNumber) -> Refusal | None:
        e164 = number.e164
        for prefix in self.config.fax.blocked_prefixes:
            if e164.startswith(prefix):
                return Refusal(
                    Reason.BLOCKED_PREFIX,
                    replies.destination_refused(
                        f"{e164}: numbers starting {prefix} are blocked on this gateway"
                    ),
                )
        # Premium-rate numbers are refused whatever the prefix list says: they are how toll
        # fraud makes money, no fax service needs one, and the configuration has no switch for
        # them on purpose (an operator who must reach one can ask for an explicit setting).
        # is_premium_rate knows the premium ranges by prefix too (numbers.PREMIUM_PREFIXES), so
        # this holds with number_check = "possible", where libphonenumber's type says nothing.
        if number.premium:
            return Refusal(
                Reason.PREMIUM_RATE,
                replies.destination_refused(f"{e164} is a premium-rate number"),
            )
        allowed = self.config.allowed_countries
        if "*" not in allowed:
            region = _region(e164, number.region)
            if region not in allowed:
                where = "a non-geographic number" if region in ("ZZ", "001") else f"in {region}"
                return Refusal(
                    Reason.COUNTRY_DENIED,
                    replies.destination_refused(
                        f"{e164} is {where}; this gateway faxes to {', '.join(allowed)} only"
                    ),
                )
        return None


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _region(e164: str, region: str | None) -> str:
    """The country of a number (`region`, libphonenumber's); for one libphonenumber cannot
    place (only let through with number_check = "possible", like the fictional +1 555 numbers
    of a lab), the main country of its calling code, so such numbers stay usable where that
    country is allowed."""
    if region is None:
        code = phonenumbers.parse(e164, None).country_code
        region = phonenumbers.region_code_for_country_code(code)
    return region
