"""Mail the gateway writes: rendered from Jinja2 templates, built into a safe EmailMessage.

Every mail (delivery reports, inbound faxes) is one of a fixed set of kinds, each with three
templates: `<kind>.subject.j2`, `<kind>.txt.j2` and `<kind>.html.j2`. The operator may override
any of them from `templates.dir`; what is not overridden comes from the built-in `templates/`.

Values in a mail come from strangers: the carrier's payload, the sender's subject, a caller's
name. So nothing rendered can reach a header unfiltered: the subject is collapsed to one line
without control characters, addresses must each be one plain addr-spec, threading ids must be
well-formed msg-ids, and attachment names are reduced to a harmless file name. HTML is
autoescaped; StrictUndefined turns a misspelt variable into an error instead of a blank.

Context the built-in templates expect (a template may test optional keys with `is defined`):
- delivered, failed, queued: `number` (E.164), `pages`, `duration` (seconds), `attempts`,
  `fax_id`, `time` (datetime), each possibly None; `subject` (the sender's own subject, may be
  ""), `sender`, `job_id`, `document_attached` (bool); failed adds `error_code` (int or None),
  `error_description`, `retry_may_help` (bool).
- received: `from_number`, `to_number` (E.164), `pages`, `duration`, `time`, `fax_id`,
  `attachments` (file names), `preview_cid` (cid of the inline page-1 image, or None).
Filters: `fax_number` ("+1 555-123-4567"), `duration` ("2 min 5 s"), `when` ("2024-06-19 15:38
UTC").
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

import jinja2

from gateway.numbers import pretty
from gateway.paths import builtin_templates

KINDS: tuple[str, ...] = ("delivered", "failed", "queued", "received")
BUILTIN_TEMPLATES = builtin_templates()

# Long enough for "Fax to +44 20 7183 8750 failed: <reason> (Re: <their subject>)", short
# enough that no client truncates it into nonsense. Headers are folded, so this is about
# readability, not line length.
MAX_SUBJECT_CHARS = 200
MAX_FILENAME_CHARS = 100

# Unicode characters that move or hide text (bidi overrides and isolates): a subject
# containing them can display as something else than it is.
_BIDI_CONTROLS = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")
# A msg-id as RFC 5322 allows it in practice: printable ASCII, no spaces, one "@" inside <>.
_MSG_ID = re.compile(r"<[!-;=?-~]+@[!-;=?-~]+>")
_CID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*(@[A-Za-z0-9.-]+)?")
_CONTENT_TYPE = re.compile(r"([a-z0-9][a-z0-9!#$&^_.+-]*)/([a-z0-9][a-z0-9!#$&^_.+-]*)")
_DOMAIN = re.compile(
    r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*"
)
# Characters that are unsafe in a file name on some system a recipient may save it to.
_FILENAME_UNSAFE = re.compile(r'[\\/:*?"<>|;]')


class MailTemplateError(Exception):
    """A template is missing, does not compile, or needs a value the context lacks."""


@dataclass(frozen=True)
class RenderedMail:
    """The human part of a mail: one-line subject, plain text, and optionally HTML."""

    subject: str
    text: str
    html: str | None


@dataclass(frozen=True)
class MailAttachment:
    """A file attached to a mail (the faxed document, an inbound fax)."""

    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class InlineImage:
    """An image the HTML part shows with `<img src="cid:{cid}">` (the page-1 preview)."""

    cid: str
    content_type: str
    data: bytes


# -- template rendering ---------------------------------------------------------------------


def _format_duration(seconds: object) -> str:
    if seconds is None or seconds == "":
        return ""
    try:
        total = round(float(seconds))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(seconds)
    minutes, secs = divmod(max(total, 0), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


def _format_when(value: object) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return str(value)


_ENV_OPTIONS: dict[str, Any] = {
    "undefined": jinja2.StrictUndefined,
    "trim_blocks": True,
    "lstrip_blocks": True,
    "keep_trailing_newline": True,
    # Templates change on reload() (SIGHUP) only, all at once and only if they all compile.
    "auto_reload": False,
}


def _one_line(value: object) -> object:
    """Finalizer of the text templates: a printed string value never spans lines."""
    if isinstance(value, str):
        return clean_subject(value, limit=10_000)
    return value


def _format_number(value: object) -> str:
    return "" if value is None else pretty(str(value))


class MailRenderer:
    """Renders the mail kinds from the override directory first, the built-in one second."""

    def __init__(self, templates_dir_override: Path | None = None) -> None:
        self.override = templates_dir_override
        # One attribute holding both: a reload in another thread swaps them together.
        self._envs = self._build()

    def _build(self) -> tuple[jinja2.Environment, jinja2.Environment]:
        if self.override is not None and not self.override.is_dir():
            # A mistyped templates.dir would otherwise fall back to the built-in set unnoticed.
            raise MailTemplateError(f"templates.dir {self.override} is not a directory")
        loaders: list[jinja2.BaseLoader] = []
        if self.override is not None:
            loaders.append(jinja2.FileSystemLoader(self.override))
        loaders.append(jinja2.FileSystemLoader(BUILTIN_TEMPLATES))
        loader = jinja2.ChoiceLoader(loaders)
        # Two environments over the same files: plain text (subject, body) prints every value
        # on one line, so a newline in a caller's name cannot forge lines such as "Pages: 0" in
        # a report; HTML escapes values instead, and line breaks in markup are harmless.
        text_env = jinja2.Environment(
            loader=loader,
            autoescape=False,
            finalize=_one_line,
            **_ENV_OPTIONS,
        )
        html_env = jinja2.Environment(
            loader=loader,
            autoescape=jinja2.select_autoescape(
                enabled_extensions=("html.j2",), default_for_string=False, default=False
            ),
            **_ENV_OPTIONS,
        )
        for env in (text_env, html_env):
            env.filters["fax_number"] = _format_number
            env.filters["duration"] = _format_duration
            env.filters["when"] = _format_when
        # Compile every template now: a broken override is reported at start-up or on reload,
        # not when the first fax report is due.
        for kind in KINDS:
            for env, suffix in ((text_env, "subject"), (text_env, "txt"), (html_env, "html")):
                name = f"{kind}.{suffix}.j2"
                try:
                    env.get_template(name)
                except jinja2.TemplateError as exc:
                    raise MailTemplateError(f"template {name}: {_describe(exc)}") from exc
        return text_env, html_env

    def reload(self) -> None:
        """Read the templates again (SIGHUP). On an error the templates in use are kept.

        Reads files: from async code call it in a thread. `render` itself does no I/O (every
        template is compiled here and cached).
        """
        self._envs = self._build()

    def render(self, kind: str, context: Mapping[str, object]) -> RenderedMail:
        if kind not in KINDS:
            raise MailTemplateError(f"unknown mail kind {kind!r}; known: {', '.join(KINDS)}")
        values = dict(context)
        text_env, html_env = self._envs
        subject = clean_subject(self._render(text_env, f"{kind}.subject.j2", values))
        text = _normalize_newlines(self._render(text_env, f"{kind}.txt.j2", values))
        html = _normalize_newlines(self._render(html_env, f"{kind}.html.j2", values))
        if not text.strip():
            raise MailTemplateError(
                f"template {kind}.txt.j2 rendered nothing (a text part is required)"
            )
        # An operator who wants text-only mail overrides the HTML template with an empty file.
        return RenderedMail(subject=subject, text=text, html=html if html.strip() else None)

    @staticmethod
    def _render(env: jinja2.Environment, name: str, context: dict[str, object]) -> str:
        try:
            return env.get_template(name).render(context)
        except jinja2.TemplateError as exc:
            raise MailTemplateError(f"template {name}: {_describe(exc)}") from exc


def _describe(exc: jinja2.TemplateError) -> str:
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return f"line {exc.lineno}: {exc.message}"
    if isinstance(exc, jinja2.TemplateNotFound):
        return "not found"
    return str(exc.message or exc)


def _normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


# -- header hygiene ---------------------------------------------------------------------------


def clean_subject(text: str, limit: int = MAX_SUBJECT_CHARS) -> str:
    """One line of printable text: every control character, CR and LF removed or spaced."""
    chars: list[str] = []
    for char in text:
        category = unicodedata.category(char)
        if char in _BIDI_CONTROLS:
            continue
        if category in ("Cc", "Zl", "Zp") or char.isspace():
            # Line breaks and tabs separate words: keep them as a space, not glued together.
            chars.append(" ")
        elif category in ("Cs", "Co", "Cn"):
            continue
        else:
            chars.append(char)
    line = " ".join("".join(chars).split())
    if len(line) > limit:
        cut = line[: limit - 1]
        # Cut at a word boundary when one is reasonably near the end.
        space = cut.rfind(" ")
        if space > limit * 0.6:
            cut = cut[:space]
        line = cut.rstrip() + "\u2026"
    return line


def clean_address(address: str) -> str:
    """`address` if it is exactly one plain addr-spec, else ValueError."""
    if not isinstance(address, str) or any(c in address for c in "\r\n\0"):
        raise ValueError(f"{address!r} is not an email address: contains a line break")
    text = address.strip()
    if not text or any(c.isspace() or unicodedata.category(c) == "Cc" for c in text):
        raise ValueError(f"{address!r} is not an email address")
    try:
        parsed = Address(addr_spec=text)
    except (ValueError, IndexError, HeaderParseError) as exc:
        # HeaderParseError is no ValueError: callers catching ValueError must still see it.
        raise ValueError(f"{address!r} is not an email address: {exc}") from None
    if not parsed.username or not parsed.domain or parsed.addr_spec != text:
        raise ValueError(f"{address!r} is not a single plain email address")
    return text


def clean_msg_id(value: str | None) -> str | None:
    """A well-formed `<left@right>` msg-id, or None when `value` is not one.

    A bare `left@right` (some stores keep the id without brackets) is put in brackets.
    """
    if value is None:
        return None
    text = value.strip()
    if not text.startswith("<"):
        text = f"<{text}>"
    if len(text) > 250 or not _MSG_ID.fullmatch(text):
        return None
    return text


def clean_references(value: str | None) -> list[str]:
    """The well-formed msg-ids of a References value; the rest is dropped."""
    if not value:
        return []
    ids = [clean_msg_id(part) for part in value.split()]
    return [i for i in ids if i is not None]


def clean_filename(name: str, content_type: str = "application/octet-stream") -> str:
    """A file name safe to show and save: no path, no control or shell-hostile characters."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = "".join(
        " " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c
        for c in base
        if c not in _BIDI_CONTROLS and unicodedata.category(c) not in ("Cs", "Co", "Cn", "Cf")
    )
    base = _FILENAME_UNSAFE.sub("_", base)
    base = " ".join(base.split()).lstrip(".").strip()
    if len(base) > MAX_FILENAME_CHARS:
        stem, dot, ext = base.rpartition(".")
        if dot and 0 < len(ext) <= 10:
            base = stem[: MAX_FILENAME_CHARS - len(ext) - 1].rstrip() + "." + ext
        else:
            base = base[:MAX_FILENAME_CHARS].rstrip()
    if not base:
        base = "attachment" + _extension_for(content_type)
    return base


def _extension_for(content_type: str) -> str:
    return {
        "application/pdf": ".pdf",
        "image/tiff": ".tif",
        "image/png": ".png",
        "text/plain": ".txt",
    }.get(content_type.lower(), ".bin")


def _split_content_type(content_type: str) -> tuple[str, str]:
    match = _CONTENT_TYPE.fullmatch(content_type.strip().lower())
    if match is None:
        raise ValueError(f"{content_type!r} is not a MIME content type")
    return match.group(1), match.group(2)


# -- building the message ------------------------------------------------------------------


def build_message(
    *,
    from_address: str,
    to: Sequence[str],
    cc: Sequence[str] = (),
    rendered: RenderedMail,
    attachments: Sequence[MailAttachment] = (),
    inline_images: Sequence[InlineImage] = (),
    in_reply_to: str | None = None,
    references: str | None = None,
    message_id_domain: str,
    date: datetime | None = None,
) -> EmailMessage:
    """An automatic mail: text part always, HTML (with inline images) and attachments if given.

    Structure: text/plain alone; or multipart/alternative (text, html); the html side becomes
    multipart/related when inline images come with it; all of that inside multipart/mixed when
    there are attachments. Raises ValueError for an unusable address, content type or cid; a
    bad threading id is dropped instead, because a report without threading is still a report.
    """
    if not to:
        raise ValueError("a mail needs at least one recipient")
    if not _DOMAIN.fullmatch(message_id_domain):
        raise ValueError(f"{message_id_domain!r} is not a domain for Message-IDs")
    sender = clean_address(from_address)
    to_list = [clean_address(a) for a in to]
    cc_list = [clean_address(a) for a in cc]

    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(to_list)
    if cc_list:
        message["Cc"] = ", ".join(cc_list)
    # Subject again through the filter: a RenderedMail may have been made without the renderer.
    message["Subject"] = clean_subject(rendered.subject)
    message["Date"] = format_datetime(date or datetime.now(UTC))
    message["Message-ID"] = make_msgid(domain=message_id_domain)
    # RFC 3834: mail sent by a program, not a person. Well-behaved auto-responders (vacation
    # replies, "out of office") do not answer it, so two robots cannot mail each other forever.
    message["Auto-Submitted"] = "auto-generated"
    # Exchange/Outlook ignore Auto-Submitted but honour this one.
    message["X-Auto-Response-Suppress"] = "All"

    parent = clean_msg_id(in_reply_to)
    refs = clean_references(references)
    if parent is not None:
        message["In-Reply-To"] = parent
        # References carries the parent's chain and then the parent itself (RFC 5322 3.6.4).
        if parent not in refs:
            refs.append(parent)
    if refs:
        message["References"] = " ".join(refs)

    # Quoted-printable keeps every part 7-bit clean, so no relay has to convert 8-bit text.
    message.set_content(_normalize_newlines(rendered.text), cte="quoted-printable")
    if rendered.html is not None:
        message.add_alternative(
            _normalize_newlines(rendered.html), subtype="html", cte="quoted-printable"
        )
        html_part = message.get_payload()[1]  # type: ignore[index]
        assert isinstance(html_part, MIMEPart)  # add_alternative made it one
        for image in inline_images:
            if not _CID.fullmatch(image.cid):
                raise ValueError(f"{image.cid!r} is not a usable Content-ID")
            maintype, subtype = _split_content_type(image.content_type)
            if maintype != "image":
                raise ValueError(f"inline {image.content_type!r} is not an image")
            html_part.add_related(
                image.data,
                maintype=maintype,
                subtype=subtype,
                cid=f"<{image.cid}>",
                disposition="inline",
                filename=clean_filename(f"{image.cid.split('@')[0]}.{subtype}", image.content_type),
            )
    # Without an HTML part there is nothing to show inline images in: they are left out.
    for attachment in attachments:
        maintype, subtype = _split_content_type(attachment.content_type)
        message.add_attachment(
            attachment.data,
            maintype=maintype,
            subtype=subtype,
            filename=clean_filename(attachment.filename, attachment.content_type),
        )
    # The email package gives nested multiparts their own MIME-Version; only the top one counts.
    for part in message.walk():
        if part is not message:
            del part["MIME-Version"]
    return message
