"""Options in a fax address: `12015550123+nocover@fax.local`, `fax+fine+notify=none@fax.local`.

Each `+word` after the number (or after the shared subject address) changes one setting of the
whole message: `cover` / `nocover` (a cover page or not), `fine` / `standard` (the resolution
hint kept in the job), `notify=none|failure|all` (which delivery reports the sender gets). A
message has one document and one set of reports, so the options of all its recipients add up;
two that contradict each other (`+cover` on one, `+nocover` on another) are refused at RCPT
like an unknown option, naming both.

`message_settings` then turns a message's options, its sender's `[senders."addr"]` entry and
the configuration into what the job records: the option wins over the sender's setting, which
wins over the configuration.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from gateway.config import Config

COVER = "cover"
NOCOVER = "nocover"
FINE = "fine"
STANDARD = "standard"
NOTIFY_VALUES = ("none", "failure", "all")
# Every option as written in an address, for the refusal of an unknown one.
KNOWN = (COVER, NOCOVER, FINE, STANDARD, *(f"notify={value}" for value in NOTIFY_VALUES))


class OptionError(ValueError):
    """An option that does not exist, or one that contradicts another; str() is the reason."""


@dataclass(frozen=True)
class MessageOptions:
    """What a message's addresses asked for; None = not asked (the defaults apply)."""

    cover: bool | None = None
    resolution: str | None = None  # "fine" | "standard"
    notify: str | None = None  # one of NOTIFY_VALUES

    def merged(self, other: MessageOptions) -> MessageOptions:
        """These options plus `other`'s (a further recipient's); OptionError on a conflict."""
        result = self
        for item in fields(self):
            mine, theirs = getattr(self, item.name), getattr(other, item.name)
            if theirs is None or theirs == mine:
                continue
            if mine is not None:
                raise OptionError(
                    f"option '{_written(item.name, theirs)}' contradicts "
                    f"'{_written(item.name, mine)}' of an earlier recipient "
                    "(options apply to the whole message)"
                )
            result = replace(result, **{item.name: theirs})
        return result


def _written(name: str, value: object) -> str:
    if name == "cover":
        return COVER if value else NOCOVER
    if name == "notify":
        return f"notify={value}"
    return str(value)


def _option(word: str) -> MessageOptions:
    lowered = word.lower()
    if lowered == COVER:
        return MessageOptions(cover=True)
    if lowered == NOCOVER:
        return MessageOptions(cover=False)
    if lowered in (FINE, STANDARD):
        return MessageOptions(resolution=lowered)
    name, equals, value = lowered.partition("=")
    if name == "notify" and equals and value in NOTIFY_VALUES:
        return MessageOptions(notify=value)
    raise OptionError(f"unknown option '{word}'; known: {', '.join(KNOWN)}")


def split_options(local: str) -> tuple[str, MessageOptions]:
    """The local part of an address without its `+options`, and the options.

    A '+' that opens the local part belongs to the number ("+12015550123+fine"); every later
    one starts an option. OptionError names the first unknown or contradicting option.
    """
    head, *words = local[1:].split("+")
    base = local[:1] + head
    options = MessageOptions()
    for word in words:
        options = options.merged(_option(word))
    return base, options


@dataclass(frozen=True)
class MessageSettings:
    """What a job records of its sender's and its message's wishes (None: the configuration's)."""

    from_number: str
    cover: bool | None
    cover_template: str | None
    resolution: str | None
    notify: str | None


def message_settings(config: Config, sender: str, options: MessageOptions) -> MessageSettings:
    """The settings of a message from `sender` with `options`: option, then [senders], then
    the configuration (resolved later, from the job's None)."""
    mapped = config.senders.get(sender.lower())
    cover = options.cover
    if cover is None and mapped is not None:
        cover = mapped.cover
    return MessageSettings(
        from_number=(
            mapped.from_number
            if mapped is not None and mapped.from_number is not None
            else config.voxtelesys.from_number
        ),
        cover=cover,
        cover_template=mapped.cover_template if mapped is not None else None,
        resolution=options.resolution,
        notify=options.notify,
    )
