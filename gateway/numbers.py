"""Fax numbers: what people type in an address, parsed and formatted as E.164."""

from __future__ import annotations

import re
from dataclasses import dataclass

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumber, PhoneNumberType

# Characters people put between digits: "1-555-123-4567", "555.123.4567", "(555) 123 4567".
_SEPARATORS = re.compile(r"[\s.\-()/]")
_ALLOWED = re.compile(r"^\+?[0-9]+$")

# Types a fax machine can answer. Mobile numbers are allowed: many "virtual fax" numbers are
# classed as mobile or "fixed line or mobile" in the NANP data.
_FAXABLE_TYPES = {
    PhoneNumberType.FIXED_LINE,
    PhoneNumberType.MOBILE,
    PhoneNumberType.FIXED_LINE_OR_MOBILE,
    PhoneNumberType.TOLL_FREE,
    PhoneNumberType.VOIP,
    PhoneNumberType.UAN,
    PhoneNumberType.PREMIUM_RATE,  # refused later by the toll-fraud guard, with its own reason
    PhoneNumberType.SHARED_COST,
    PhoneNumberType.PERSONAL_NUMBER,
    PhoneNumberType.UNKNOWN,
}


class NumberError(ValueError):
    """The text is not a fax number; str() is a reason fit to show the user."""


@dataclass(frozen=True)
class FaxNumber:
    """A number `read_fax_number` accepted, with what the toll-fraud guard asks of it: the
    same answers as `is_premium_rate(e164)` and `region_of(e164)`, from the one parse."""

    e164: str
    premium: bool
    region: str | None


def parse_fax_number(text: str, default_country: str = "US", *, strict: bool = True) -> str:
    """Parse `text` into E.164 with a leading '+', or raise NumberError with the reason.

    Accepted: "+15551234567", "15551234567", "1-555-123-4567", "555.123.4567", national
    numbers of `default_country` ("(201) 555-0123", "020 7183 8750" with GB), the default
    country's international dialling prefix ("011 44 20 7183 8750" in the US), and
    international numbers written without the '+' ("442071838750"), which is how people write
    them in an address because a '+' there may be taken for a sub-address. Digits are read as
    a national number first, then as international.

    `strict` asks libphonenumber whether the number is assigned in its numbering plan; without
    it only the length must be possible. The demo runs non-strict so the fictional 555 numbers
    of every fax tutorial work there; a production gateway should keep the default.
    """
    return read_fax_number(text, default_country, strict=strict).e164


def read_fax_number(text: str, default_country: str = "US", *, strict: bool = True) -> FaxNumber:
    """`parse_fax_number`, with the premium-rate and country answers of the number read
    once: libphonenumber's parse and type cost ~25 us each, and RCPT asked for them thrice."""
    raw = text.strip()
    if not raw:
        raise NumberError("no number given")
    compact = _SEPARATORS.sub("", raw)
    if not _ALLOWED.match(compact):
        raise NumberError(f"{raw!r} is not a fax number: only digits, '+' and separators allowed")
    digits = compact.lstrip("+")
    if len(digits) > 15:
        raise NumberError(f"{raw!r} is not a fax number: more than 15 digits")
    if len(digits) < 3:
        raise NumberError(f"{raw!r} is not a fax number: too short")

    region = default_country.upper()
    candidates: list[str] = []
    if compact.startswith("+"):
        candidates.append(compact)
    else:
        # National first ("5551234567" in US), then international without the plus
        # ("15551234567", "442071838750").
        candidates.append(digits)
        candidates.append("+" + digits)

    # The reason from the reading that got furthest is the one shown; on a tie, the first
    # (national) reading's, which is the one the user most likely meant.
    best: tuple[int, str] = (-1, f"{raw!r} is not a valid fax number")
    for candidate in candidates:
        stage, result = _check(raw, candidate, region, strict)
        if isinstance(result, FaxNumber):
            return result
        if stage > best[0]:
            best = (stage, result)
    raise NumberError(best[1])


# How far a reading got before it failed; the furthest one explains the failure best.
_UNPARSABLE, _IMPOSSIBLE, _INVALID, _NOT_FAXABLE, _ACCEPTED = range(5)


def _check(raw: str, candidate: str, region: str, strict: bool) -> tuple[int, str | FaxNumber]:
    """(stage, the number) for an accepted reading, else (stage reached, reason)."""
    try:
        number = phonenumbers.parse(candidate, None if candidate.startswith("+") else region)
    except NumberParseException as exc:
        return _UNPARSABLE, f"{raw!r} is not a fax number: {_parse_reason(exc)}"
    possible = phonenumbers.is_possible_number_with_reason(number)
    if possible == phonenumbers.ValidationResult.IS_POSSIBLE_LOCAL_ONLY:
        # Dialable only from inside its area ("555-0123"): the carrier needs the area code.
        return _IMPOSSIBLE, f"{raw!r} is a local number: add the area code"
    if possible != phonenumbers.ValidationResult.IS_POSSIBLE:
        return _IMPOSSIBLE, f"{raw!r} has the wrong number of digits for its country"
    if strict and not phonenumbers.is_valid_number(number):
        return _INVALID, f"{raw!r} is not an assigned number in its country's numbering plan"
    kind = phonenumbers.number_type(number)
    if kind not in _FAXABLE_TYPES:
        return _NOT_FAXABLE, f"{raw!r} cannot receive a fax (number type {_type_name(kind)})"
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return _ACCEPTED, _fax_number(e164, number, kind)


def known_number(e164: str) -> FaxNumber:
    """An E.164 number (one `parse_fax_number` gave) with its premium-rate and country
    answers, from one parse."""
    number = phonenumbers.parse(e164, None)
    return _fax_number(e164, number, phonenumbers.number_type(number))


def _fax_number(e164: str, number: PhoneNumber, kind: int) -> FaxNumber:
    premium = kind == PhoneNumberType.PREMIUM_RATE or _premium_prefix(number)
    return FaxNumber(e164, premium, phonenumbers.region_code_for_number(number))


def region_of(e164: str) -> str | None:
    """ISO country code of an E.164 number ('US', 'GB'...), or None if it has none."""
    number = phonenumbers.parse(e164, None)
    return phonenumbers.region_code_for_number(number)


# Premium-rate (and mass-calling) ranges by country calling code: leading digits of the national
# significant number, "X" for any digit. These are the numbers where the caller pays a premium
# and the number's holder gets a share, which is what toll fraud lives on; no fax needs one.
# libphonenumber's number_type knows a premium number only when it is a valid one: with
# number_check = "possible" (and for a range its metadata lacks or sizes differently) an
# unassigned or mis-lengthed number in these ranges was dialled. The list decides in both modes,
# in addition to number_type. A prefix must not cover anything faxable of its country (Reading's
# +44 118 and Dublin's +353 1 5... look like premium ranges elsewhere and are left out);
# tests/test_numbers.py checks each against libphonenumber's example numbers.
PREMIUM_PREFIXES: dict[int, tuple[str, ...]] = {
    # NANP (NANPA; FCC 47 CFR 64.1506 puts interstate pay-per-call on 900): area code 900, the
    # unassigned 976 (also in DEFAULT_BLOCKED_PREFIXES), and the 976 exchange that local
    # pay-per-call ("976 numbers") was given in many area codes.
    1: ("900", "976", "XXX976"),
    # Germany (Bundesnetzagentur, Nummernplan): (0)900 Premium-Dienste, (0)137 Massenverkehrs-
    # dienste (televoting, charged per call), (0)118 Auskunftsdienste (directory enquiries).
    49: ("900", "137", "118"),
    # United Kingdom (Ofcom, National Telephone Numbering Plan): 090 and 091 premium rate, 098
    # sexual entertainment services, 087 (0870-0873) service numbers with revenue share. Not 118:
    # the directory enquiries are national short numbers, and +44 118 is Reading.
    44: ("90", "91", "98", "87"),
    # Italy (AGCOM, Piano di numerazione, delibera 8/15/CIR): 89x (892-899) servizi a
    # sovrapprezzo, and the older premium codes 144 and 166.
    39: ("89", "144", "166"),
    # France (ARCEP, plan de numérotation): 089x, the highest-rate "numéros à valeur ajoutée".
    # The cheaper 081x/082x are left to number_type, which knows the valid ones.
    33: ("89",),
    # Austria (RTR, KEM-V): 0900/0901 Mehrwertdienste, 0930/0931 erotic services, 0939 dialers.
    43: ("900", "901", "930", "931", "939"),
    # Switzerland (BAKOM, numbering plan): 0900 business, 0901 entertainment, 0906 adult.
    41: ("900", "901", "906"),
    # Spain (CNMC, Plan nacional de numeración): 803/806/807 tarificación adicional, 905 mass
    # calling (televoting).
    34: ("803", "806", "807", "905"),
    # Netherlands (ACM, Nummerplan): 0900, 0906 and 0909 paid information numbers.
    31: ("900", "906", "909"),
    # Belgium (BIPT, numbering plan): 090x premium rate (no subscriber number in Ghent's 09 area
    # starts with 0, so +32 90 is only ever premium).
    32: ("90",),
    # Australia (ACMA, Numbering Plan 2015): 190 premium services.
    61: ("190",),
}

_PREMIUM_PATTERNS = {
    code: re.compile("|".join(p.replace("X", "[0-9]") for p in prefixes))
    for code, prefixes in PREMIUM_PREFIXES.items()
}


def is_premium_rate(e164: str) -> bool:
    """Premium rate by libphonenumber's type or by the prefix list, valid number or not."""
    number = phonenumbers.parse(e164, None)
    if phonenumbers.number_type(number) == PhoneNumberType.PREMIUM_RATE:
        return True
    return _premium_prefix(number)


def _premium_prefix(number: PhoneNumber) -> bool:
    """Whether `number` is in a premium range of PREMIUM_PREFIXES."""
    pattern = _PREMIUM_PATTERNS.get(number.country_code)
    if pattern is None:
        return False
    return pattern.match(phonenumbers.national_significant_number(number)) is not None


def pretty(e164: str) -> str:
    """Human form for subjects and reports: '+1 555-123-4567'."""
    try:
        number = phonenumbers.parse(e164 if e164.startswith("+") else "+" + e164, None)
    except NumberParseException:
        return e164
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)


def carrier_digits(e164: str) -> str:
    """The carrier's own form, digits only ("15556667777"), as its responses show numbers."""
    return e164.lstrip("+")


def _parse_reason(exc: NumberParseException) -> str:
    return {
        NumberParseException.INVALID_COUNTRY_CODE: "unknown country code",
        NumberParseException.NOT_A_NUMBER: "not a number",
        NumberParseException.TOO_SHORT_AFTER_IDD: "too short",
        NumberParseException.TOO_SHORT_NSN: "too short",
        NumberParseException.TOO_LONG: "too long",
    }.get(exc.error_type, "not a number")


def _type_name(kind: int) -> str:
    for name in dir(PhoneNumberType):
        if not name.startswith("_") and getattr(PhoneNumberType, name) == kind:
            return name.lower().replace("_", " ")
    return str(kind)
