"""The shared address: mail to <smtp.subject_address>@<smtp.domain> is faxed to the numbers in
its Subject, for copiers whose scan-to-email button can mail only one fixed address.

What the Subject may hold, numbers first, then the fax's own subject:

    12015550123
    +1 201 555 0123, (201) 555-0123; 12015550124
    fax: 12015550123 12015550124 Quarterly report

- an optional keyword first: `fax`, `fax to`, `fax no`, `fax number`, `fax #`, `to`, `number`
  or `nr`, with or without a colon;
- then numbers, each written as at RCPT (spaces, dots, dashes, brackets, a leading '+'),
  separated by ',' or ';' or just by spaces: spaced groups are read as the longest run that
  makes a possible number ("+1 201 555 0123 12015550124" is two), and a group opening with '+'
  always starts a new one;
- the numbers end at a colon, or at the first word that is not made of digits and those
  characters; the rest is the fax's subject (cover page, report), without the dashes or
  colons that separated it from the numbers.

Every number is then checked exactly as a recipient at RCPT (`RelayPolicy.check_number`,
duplicates, smtp.max_recipients, the daily limit) by `take_numbers`, at DATA, since only then
are the numbers known. Nothing is faxed when one is refused (all or nothing) unless
smtp.subject_partial is on.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway import numbers
from gateway.config import Config
from gateway.smtp import replies
from gateway.smtp.limits import OverLimit
from gateway.smtp.policy import Refusal, RelayPolicy
from gateway.smtp.replies import Reason

_KEYWORD = re.compile(
    r"^\s*(?:fax(?:\s*(?:to|no\.?|number|\#))?|to|number|nr\.?)\s*[:#]?\s*(?=[+(\d])",
    re.IGNORECASE,
)
# A word of the number list: digits with what people write between them, and separators.
_NUMBER_WORD = re.compile(r"^[0-9+().\-/,;]+$")
_LIST_SEPARATORS = re.compile(r"[,;]")
# What may stand between the numbers and the subject ("12015550123 - Report", "...: Report").
_LEAD = " \t-\u2013\u2014:|/"
# A number spans at most this many spaced groups ("+44 (0) 20 7183 8750" is five).
_MAX_GROUPS = 8
# Numbers read from one Subject at most (smtp.max_recipients is at most 1000): a hostile
# Subject of digits costs bounded work.
MAX_NUMBERS = 1000
# A run of groups with more digits than this is no number (E.164 allows 15, and an
# international or trunk prefix written before them a few more): not handed to phonenumbers.
_MAX_DIGITS = 20
# Runs handed to phonenumbers per number a Subject may hold (~30 us each). A list costs one
# to four a number ("201 555 0123 201 555 0124 ...": four); a Subject of thousands of single
# digits would cost eight per group, seconds of the event loop's time. What is left once the
# budget is spent is one number, refused.
PARSES_PER_NUMBER = 8


@dataclass(frozen=True)
class ParsedSubject:
    """The numbers of a Subject as written, in order, and what is left as the fax's subject."""

    numbers: tuple[str, ...]
    rest: str


def parse_subject(
    subject: str, *, default_country: str, max_numbers: int = MAX_NUMBERS
) -> ParsedSubject:
    """Split `subject` into its numbers (as written) and the rest (see the module docstring):
    at most `max_numbers` numbers, for at most PARSES_PER_NUMBER look-ups each."""
    text = subject.strip()
    keyword = _KEYWORD.match(text)
    if keyword is not None:
        text = text[keyword.end() :]
    end = 0
    for word in re.finditer(r"\S+", text):
        token = word.group()
        # "12015550123: Report": the colon ends the numbers.
        closing = token.endswith(":")
        token = token.removesuffix(":")
        if not _NUMBER_WORD.match(token) or not (
            any(c.isdigit() for c in token) or not _LIST_SEPARATORS.sub("", token)
        ):
            break
        end = word.end() - closing
        if closing:
            break
    found: list[str] = []
    max_numbers = min(max_numbers, MAX_NUMBERS)
    budget = _Budget(PARSES_PER_NUMBER * max_numbers)
    for chunk in _LIST_SEPARATORS.split(text[:end]):
        found.extend(_numbers_of(chunk.split(), default_country, budget, max_numbers))
        if len(found) >= max_numbers:
            break
    rest = text[end:].lstrip(_LEAD).strip()
    return ParsedSubject(tuple(found[:max_numbers]), rest)


class _Budget:
    """The phonenumbers look-ups one Subject may still spend."""

    def __init__(self, parses: int) -> None:
        self.left = parses

    def possible(self, text: str, country: str) -> bool:
        self.left -= 1
        try:
            numbers.parse_fax_number(text, country, strict=False)
        except numbers.NumberError:
            return False
        return True


def _numbers_of(groups: list[str], country: str, budget: _Budget, max_numbers: int) -> list[str]:
    """Spaced groups as numbers: from each position the longest run of groups that is a
    possible number; groups that start none are kept together, as one bad number, up to the
    next group that does start one. Once the budget is spent, the groups left are one bad
    number."""
    found: list[str] = []
    start = 0
    bad: list[str] = []
    digits = [sum(c.isdigit() for c in group) for group in groups]
    while start < len(groups) and len(found) < max_numbers:
        if budget.left <= 0:
            bad.extend(groups[start:])
            break
        length = _longest(groups, digits, start, country, budget)
        if length == 0:
            bad.append(groups[start])
            start += 1
            continue
        if bad:
            found.append(" ".join(bad))
            bad = []
        found.append(" ".join(groups[start : start + length]))
        start += length
    if bad:
        found.append(" ".join(bad))
    return found


def _longest(
    groups: list[str], digits: list[int], start: int, country: str, budget: _Budget
) -> int:
    """How many groups from `start` make the longest possible number (0: none does)."""
    stop = min(len(groups), start + _MAX_GROUPS)
    for end in range(stop, start, -1):
        if sum(digits[start:end]) > _MAX_DIGITS:
            continue  # too long to be one number: not worth a look-up
        if any(group.startswith("+") for group in groups[start + 1 : end]):
            continue  # a '+' inside starts the next number
        if budget.left <= 0:
            return 0
        if budget.possible(" ".join(groups[start:end]), country):
            return end - start
    return 0


@dataclass(frozen=True)
class RefusedNumber:
    """A number of the Subject, as written, and why it cannot be faxed."""

    written: str
    refusal: Refusal

    @property
    def why(self) -> str:
        return replies.reply_text(self.refusal.reply)

    @property
    def temporary(self) -> bool:
        return self.refusal.reply.startswith("4")


@dataclass(frozen=True)
class SubjectOutcome:
    """`refusal`: the DATA reply when the message is refused; `refused`: the numbers refused
    (with subject_partial they may be refused while the message is faxed to the others);
    `rest`: the Subject without its numbers, the fax's subject."""

    refusal: Refusal | None
    refused: tuple[RefusedNumber, ...]
    rest: str


async def take_numbers(
    subject: str,
    taken: list[str],
    *,
    policy: RelayPolicy,
    config: Config,
    over_limit: Callable[[], Awaitable[OverLimit | None]],
) -> SubjectOutcome:
    """Check each number of `subject` as RCPT checks a recipient and append the ones that pass
    to `taken` (the transaction's numbers, which the daily limit counts while it is open).

    `over_limit` asks the daily limit about one more fax (when limits.faxes_per_sender_per_day
    is on); the caller holds the limit's lock for the whole call. All or nothing: when a
    number is refused and smtp.subject_partial is off (or on, and nothing is left to fax),
    `taken` is left as it was and the outcome has the refusal.
    """
    # One more than may be faxed: a Subject of too many numbers is refused as such.
    parsed = parse_subject(
        subject,
        default_country=config.smtp.default_country,
        max_numbers=config.smtp.max_recipients + 1,
    )
    limited = config.limits.faxes_per_sender_per_day > 0
    before = len(taken)
    refused: list[RefusedNumber] = []
    for written in parsed.numbers:
        checked = policy.check_number(written)
        if isinstance(checked, Refusal):
            refused.append(RefusedNumber(written, checked))
            continue
        if checked in taken:
            continue  # two spellings of one number, or one the envelope names too: one fax
        if len(taken) >= config.smtp.max_recipients:
            refusal = Refusal(
                Reason.TOO_MANY_RECIPIENTS,
                replies.destination_refused(
                    f"more than {config.smtp.max_recipients} numbers in one message"
                ),
            )
            refused.append(RefusedNumber(written, refusal))
            continue
        over = await over_limit() if limited else None
        if over is not None:
            refused.append(RefusedNumber(written, over.refusal))
            continue
        taken.append(checked)
    listed = [(number.written, number.why) for number in refused]
    if not parsed.numbers:
        refusal = Refusal(Reason.NO_SUBJECT_NUMBER, replies.NO_SUBJECT_NUMBER)
        return SubjectOutcome(refusal, (), parsed.rest)
    partial = config.smtp.subject_partial
    if refused and (not partial or not taken):
        del taken[before:]
        reply = replies.subject_numbers_refused(
            listed, temporary=all(number.temporary for number in refused), partial=partial
        )
        refusal = Refusal(Reason.SUBJECT_NUMBERS_REFUSED, reply)
        return SubjectOutcome(refusal, tuple(refused), parsed.rest)
    return SubjectOutcome(None, tuple(refused), parsed.rest)
