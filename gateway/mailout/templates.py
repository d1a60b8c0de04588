"""The mail kinds' templates: Jinja2, overridable from templates.dir, rendered safely.

Every mail (delivery reports, inbound faxes) is one of a fixed set of kinds, each with three
templates: `<kind>.subject.j2`, `<kind>.txt.j2` and `<kind>.html.j2`. The operator may override
any of them from `templates.dir`; what is not overridden comes from the built-in `templates/`.

Values in a mail come from strangers: the carrier's payload, the sender's subject, a caller's
name. So nothing rendered can reach a header unfiltered: the subject is collapsed to one line
without control characters, addresses must each be one plain addr-spec, threading ids must be
well-formed msg-ids, and attachment names are reduced to a harmless file name. No value
printed in any part keeps a bidi control (U+202E and kin). HTML is autoescaped; StrictUndefined
turns a misspelt variable into an error instead of a blank.

Context the built-in templates expect (a template may test optional keys with `is defined`):
- delivered, failed, queued: `number` (E.164), `pages`, `duration` (seconds), `attempts`,
  `carrier_id` (the carrier's fax id), `time` (datetime), each possibly None; `subject` (the
  sender's own subject, may be ""), `sender`, `job_id`, `document_attached` (bool),
  `transmission_report_attached` (bool), `tries` (how many times the fax was sent: more than 1
  once resubmitted); failed adds `error_code` (int or None), `error_description`,
  `retry_may_help` (bool).
- retry (a try failed on the line, the fax will be sent again): as failed (`time` is when this
  try failed, `tries` how many have failed so far), plus `next_try` (datetime) and `tries_left`
  (how many more times it will be sent at most).
- inbound: `from_number`, `to_number` (E.164), `pages`, `duration`, `time`, `carrier_id`,
  `attachments` (file names), `preview_cid` (cid of the inline page-1 image, or None).
- held (to notify.admin): `job_id`, `sender`, `subject`, `numbers` (E.164 list), `error`, `time`.
- dead_letter (to notify.admin): `inbound_id`, `carrier_id`, `from_number`, `to_number`,
  `pages`, `received`, `error` (why), `kept` (the file is in dead-letter/), `time`.
- summary (to notify.admin): `day`, `start`, `end`, `delivered`, `failed`, `pages_out`,
  `received`, `pages_in`, `failures` ({code, description, faxes}), `top_senders` ({sender,
  faxes}), `queues` ({queue, state, items}), `dead_letters`, `new_dead_letters`.
- every kind: `attach` (the privacy mode: "pdf", "encrypted-pdf" or "none"; see
  gateway/mailout/privacy.py) and `status_url` (where a fax not attached can be seen, or None:
  "ask your administrator").
- refused (a mail to the shared address refused, gateway/smtp/explain.py): `subject` (as the
  sender wrote it), `refused` (items with `number`, as written, and `reason`), `reason` (the
  whole refusal, for one not about numbers), `faxed` (E.164 numbers faxed all the same),
  `job_id` (None when nothing was faxed), `all_or_nothing` (bool: refused numbers kept the
  others from being faxed).
Filters: `fax_number` ("+1 555-123-4567"), `duration` ("2 min 5 s"), `when` ("2024-06-19 15:38
UTC").
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2

from gateway.mailout.message import (
    RenderedMail,
    clean_subject,
    normalize_newlines,
    without_bidi,
)
from gateway.numbers import pretty
from gateway.paths import builtin_templates

KINDS: tuple[str, ...] = (
    "delivered",
    "failed",
    "queued",
    # A failed try that will be sent again (fax.resubmit_attempts, notify.on_retry).
    "retry",
    "inbound",
    # A mail to the shared address refused (gateway/smtp/explain.py).
    "refused",
    # The administrator's mails (gateway/admin/).
    "held",
    "dead_letter",
    "summary",
)
BUILTIN_TEMPLATES = builtin_templates()


class MailTemplateError(Exception):
    """A template is missing, does not compile, or needs a value the context lacks."""


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


def _no_bidi(value: object) -> object:
    """Finalizer of the HTML templates: a printed string value carries no bidi control, which
    would make text display as something else (the text finalizer drops them with the rest)."""
    # str.translate, which Markup (a str) keeps as Markup: already-safe markup is not escaped
    # a second time.
    return without_bidi(value) if isinstance(value, str) else value


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
        # a report; HTML escapes values instead, and line breaks in markup are harmless. Both
        # drop bidi controls from values.
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
            finalize=_no_bidi,
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
        text = normalize_newlines(self._render(text_env, f"{kind}.txt.j2", values))
        html = normalize_newlines(self._render(html_env, f"{kind}.html.j2", values))
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
