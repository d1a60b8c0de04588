"""Fax numbers as people type them: parsed to E.164, or refused with a reason they can act on."""

from __future__ import annotations

import pytest

from gateway.numbers import (
    NumberError,
    carrier_digits,
    is_premium_rate,
    parse_fax_number,
    pretty,
    region_of,
)

# (text, default country, E.164 expected in strict mode, E.164 expected when not strict)
VALID = [
    ("+12015550123", "US", "+12015550123", "+12015550123"),
    ("12015550123", "US", "+12015550123", "+12015550123"),
    ("1-201-555-0123", "US", "+12015550123", "+12015550123"),
    ("201.555.0123", "US", "+12015550123", "+12015550123"),
    ("(201) 555-0123", "US", "+12015550123", "+12015550123"),
    ("  +1 (701) 929-9797 ", "US", "+17019299797", "+17019299797"),
    ("7019299797", "US", "+17019299797", "+17019299797"),
    ("1/701/929/9797", "US", "+17019299797", "+17019299797"),
    ("+18005550199", "US", "+18005550199", "+18005550199"),  # toll free
    ("+442071838750", "US", "+442071838750", "+442071838750"),
    ("442071838750", "US", "+442071838750", "+442071838750"),  # international, no '+'
    ("011 44 20 7183 8750", "US", "+442071838750", "+442071838750"),  # US exit code
    ("020 7183 8750", "GB", "+442071838750", "+442071838750"),
    ("+44 (0)20 7183 8750", "US", "+442071838750", "+442071838750"),  # UK trunk "(0)"
    ("0049 30 1234567", "DE", "+49301234567", "+49301234567"),
    ("030 1234567", "de", "+49301234567", "+49301234567"),
    ("+33 1 42 68 53 00", "US", "+33142685300", "+33142685300"),
    ("+19005550100", "US", "+19005550100", "+19005550100"),  # premium: the policy refuses
    # The fictional numbers of fax tutorials: only the lenient mode takes them.
    ("+15551234567", "US", None, "+15551234567"),
    ("15551234567", "US", None, "+15551234567"),
    ("1-555-123-4567", "US", None, "+15551234567"),
    ("555.123.4567", "US", None, "+15551234567"),
]

# (text, default country, words the reason must contain)
INVALID = [
    ("", "US", "no number given"),
    ("   ", "US", "no number given"),
    ("sales", "US", "only digits"),
    ("1-800-FLOWERS", "US", "only digits"),
    ("+1 201 555 0123 ext 5", "US", "only digits"),
    ("201-555-0123;x=1", "US", "only digits"),
    ("++12015550123", "US", "only digits"),
    ("12", "US", "too short"),
    ("1234567890123456", "US", "more than 15 digits"),
    ("555-0123", "US", "add the area code"),
    ("+1 201 555 012", "US", "wrong number of digits"),
    ("+1 201 555 01234", "US", "wrong number of digits"),
    ("+0123456789", "US", "unknown country code"),
    ("02071838750", "US", "wrong number of digits"),  # UK national number, US default
]


@pytest.mark.parametrize(("text", "country", "strict_e164", "lenient_e164"), VALID)
def test_valid_numbers(text: str, country: str, strict_e164: str | None, lenient_e164: str) -> None:
    """Real-world spellings give E.164 with '+'; strict mode refuses unassigned ranges."""
    assert parse_fax_number(text, country, strict=False) == lenient_e164
    if strict_e164 is None:
        with pytest.raises(NumberError, match="not an assigned number"):
            parse_fax_number(text, country, strict=True)
    else:
        assert parse_fax_number(text, country, strict=True) == strict_e164


@pytest.mark.parametrize(("text", "country", "reason"), INVALID)
@pytest.mark.parametrize("strict", [True, False])
def test_invalid_numbers(text: str, country: str, reason: str, strict: bool) -> None:
    """What is not a fax number is refused in both modes, with the text and a reason."""
    with pytest.raises(NumberError) as caught:
        parse_fax_number(text, country, strict=strict)
    message = str(caught.value)
    assert reason in message
    if text.strip():
        assert repr(text.strip()) in message


def test_helpers() -> None:
    """Region, premium-rate check, human form and the carrier's digits-only form."""
    assert region_of("+442071838750") == "GB"
    assert region_of("+12015550123") == "US"
    assert is_premium_rate("+19005550100")
    assert not is_premium_rate("+12015550123")
    assert pretty("+12015550123") == "+1 201-555-0123"
    assert pretty("12015550123") == "+1 201-555-0123"
    assert pretty("garbage") == "garbage"
    assert carrier_digits("+12015550123") == "12015550123"


# Numbers in premium-rate ranges that libphonenumber does not hold valid (a digit too many or
# too few for the range), so its number_type cannot say "premium rate"; "possible" mode used
# to accept them.
PREMIUM_BY_PREFIX = [
    "+4990012345670",  # Germany 0900
    "+4913712345678",  # Germany 0137, mass-calling (televoting)
    "+4911883",  # Germany 118xy directory enquiries
    "+44901234567",  # UK 090
    "+44911234567",  # UK 091
    "+44981234567",  # UK 098
    "+44870123456",  # UK 087
    "+398991234560",  # Italy 899
    "+3916612345",  # Italy 166
    "+3389123456",  # France 089x (too short even to be possible)
    "+19765550100",  # NANP 976
    "+12129761234",  # NANP: the 976 exchange of an area code
    "+43900123",  # Austria 0900
    "+4190112345",  # Switzerland 0901 (too short even to be possible)
    "+3480612345",  # Spain 806 (too short even to be possible)
    "+31906123",  # Netherlands 0906
    "+61190012345",  # Australia 1900
    "+32901234567",  # Belgium 090x
]


@pytest.mark.parametrize("e164", PREMIUM_BY_PREFIX)
def test_premium_rate_ranges_known_by_prefix(e164: str) -> None:
    """A number in a premium-rate range is premium rate whether or not it is a valid one."""
    import phonenumbers
    from phonenumbers import PhoneNumberType

    # None of these is typed premium by libphonenumber: the prefix list is what knows them.
    assert phonenumbers.number_type(phonenumbers.parse(e164)) != PhoneNumberType.PREMIUM_RATE
    assert is_premium_rate(e164)


@pytest.mark.parametrize(
    "e164",
    [
        "+12015550123",
        "+15551234567",  # fictional, "possible" only
        "+442071838750",
        "+441184960000",  # Reading (0118): not the 118 directory range, which is Germany's
        "+49301234567",
        "+390612345678",
        "+33142685300",
        "+18005550199",
    ],
)
def test_ordinary_numbers_are_not_premium(e164: str) -> None:
    """Geographic, mobile and toll-free numbers are not caught by the premium prefixes."""
    assert not is_premium_rate(e164)


def test_premium_prefixes_spare_every_faxable_example_number() -> None:
    """No prefix of the list covers libphonenumber's example of a faxable number type."""
    import phonenumbers
    from phonenumbers import PhoneNumberType

    from gateway.numbers import PREMIUM_PREFIXES

    faxable = (
        PhoneNumberType.FIXED_LINE,
        PhoneNumberType.MOBILE,
        PhoneNumberType.TOLL_FREE,
        PhoneNumberType.VOIP,
        PhoneNumberType.FIXED_LINE_OR_MOBILE,
    )
    for code in PREMIUM_PREFIXES:
        for region in phonenumbers.region_codes_for_country_code(code):
            for kind in faxable:
                example = phonenumbers.example_number_for_type(region, kind)
                if example is None:
                    continue
                e164 = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)
                assert not is_premium_rate(e164), (region, kind, e164)


def test_one_reading_answers_as_the_three_separate_ones() -> None:
    """read_fax_number's premium-rate and country answers, from its one parse, are those
    is_premium_rate and region_of give the E.164 it returns, for libphonenumber's example of
    every number type in every region, written nationally and internationally, strict and
    not; known_number gives the same for the E.164 itself."""
    import phonenumbers
    from phonenumbers import PhoneNumberType

    from gateway.numbers import known_number, read_fax_number

    kinds = [getattr(PhoneNumberType, n) for n in dir(PhoneNumberType) if n.isupper()]
    compared = 0
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in kinds:
            example = phonenumbers.example_number_for_type(region, kind)
            if example is None:
                continue
            national = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.NATIONAL)
            e164 = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)
            for text, country in ((national, region), (e164, "US"), (e164.lstrip("+"), "US")):
                for strict in (True, False):
                    try:
                        number = read_fax_number(text, country, strict=strict)
                    except NumberError:
                        continue
                    read = number.e164
                    assert (number.premium, number.region) == (
                        is_premium_rate(read),
                        region_of(read),
                    )
                    assert known_number(read) == number
                    compared += 1
    assert compared > 1_000
