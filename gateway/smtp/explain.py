"""Why a mail to the shared address was refused, told by mail: a copier cannot read SMTP replies.

When a message to smtp.subject_address is refused at DATA (a number of its Subject, or its
document), or faxed to only some of its numbers (smtp.subject_partial), its sender also gets a
short mail (template kind `refused`) through the outbox, threaded under the message. Only a
sender the gateway knows gets one: an address smtp.allowed_senders lets in (so that list must
not be empty), or the address an SMTP login proved. The envelope sender of any other session is
whatever the client wrote, and mailing it would be backscatter to a stranger.

A client retrying the same message (a 4xx, a lost reply) gets one explanation: the outbox key
is derived from the sender, the message (its Message-ID, else its bytes) and the reply.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway import log
from gateway.config import Config
from gateway.datadir import DataDir
from gateway.mailout.message import build_message
from gateway.mailout.outbox import queue_mail
from gateway.mailout.templates import MailRenderer
from gateway.smtp import replies
from gateway.smtp.subject import RefusedNumber
from gateway.store import Database

logger = log.get_logger(__name__)

KIND = "refused"


def may_explain(config: Config, sender: str, auth_user: str | None) -> bool:
    """Whether `sender` may be mailed an explanation (never a stranger: see the docstring)."""
    lowered = sender.lower()
    if auth_user is not None and auth_user.lower() == lowered:
        return True
    return any(fnmatch.fnmatchcase(lowered, p.lower()) for p in config.smtp.allowed_senders)


def wanted(reply: str, refused: Sequence[RefusedNumber]) -> bool:
    """Whether the DATA reply of a shared-address message calls for an explanation: a permanent
    refusal, or numbers of its Subject refused (all of the message for now, or some of it)."""
    return reply.startswith("5") or (bool(refused) and reply.startswith(("250", "452")))


def explanation_key(sender: str, message_id: str, raw: bytes, reply: str) -> str:
    identity = message_id or hashlib.sha256(raw).hexdigest()
    digest = hashlib.sha256("\0".join((sender.lower(), identity, reply)).encode()).hexdigest()
    return f"refused:{digest[:40]}"


def _reason(reply: str) -> str:
    """The words of a (possibly multi-line) reply, without its codes."""
    return " ".join(replies.reply_text(line) for line in reply.split("\r\n"))


async def explain(
    db: Database,
    config: Config,
    renderer: MailRenderer,
    *,
    sender: str,
    subject: str,
    message_id: str,
    raw: bytes,
    reply: str,
    refused: Sequence[RefusedNumber],
    faxed: Sequence[str],
) -> bool:
    """Queue the explanation of `reply` to `sender`; True if queued just now."""
    job_id = replies.reply_text(reply.split("\r\n")[-1]).removeprefix("queued as ")
    accepted = reply.startswith("250")
    context: dict[str, object] = {
        "subject": subject,
        "refused": [{"number": n.written, "reason": n.why} for n in refused],
        "reason": _reason(reply),
        "faxed": list(faxed) if accepted else [],
        "job_id": job_id if accepted else None,
        "all_or_nothing": bool(refused) and not accepted and not config.smtp.subject_partial,
    }
    rendered = await asyncio.to_thread(renderer.render, KIND, context)
    message = build_message(
        from_address=config.relay.from_address,
        to=[sender],
        rendered=rendered,
        in_reply_to=message_id or None,
        message_id_domain=config.smtp.domain,
    )
    outbox: Path = DataDir(config.data.dir).outbox
    key = explanation_key(sender, message_id, raw, reply)
    queued = await queue_mail(db, outbox, key=key, kind=KIND, message=message, recipients=[sender])
    if queued:
        logger.info("smtp.explained", sender=sender, key=key)
    return queued


async def explained_reply(
    db: Database,
    config: Config,
    renderer: MailRenderer,
    wake: Callable[[], None],
    *,
    sender: str,
    auth_user: str | None,
    subject: str,
    message_id: str,
    raw: bytes,
    reply: str,
    refused: Sequence[RefusedNumber],
    faxed: Sequence[str],
) -> str:
    """The DATA reply to a shared-address message, after telling its sender by mail.

    A 250 names the numbers of the Subject that were refused (smtp.subject_partial). When the
    reply calls for it (`wanted`) and the sender is known (`may_explain`), the explanation is
    queued and the outbox woken; failing to queue it is logged, and the reply stands.
    """
    if refused and reply.startswith("250 "):
        listed = [(number.written, number.why) for number in refused]
        reply = replies.queued_except(reply.rsplit(" ", 1)[-1], listed)
    if not wanted(reply, refused):
        return reply
    if not may_explain(config, sender, auth_user):
        logger.info(
            "smtp.not_explained",
            sender=sender,
            why="not named by smtp.allowed_senders nor a login (no backscatter)",
        )
        return reply
    try:
        await explain(
            db,
            config,
            renderer,
            sender=sender,
            subject=subject,
            message_id=message_id,
            raw=raw,
            reply=reply,
            refused=refused,
            faxed=faxed,
        )
        wake()
    except Exception:
        # The reply is the message's outcome; the mail only repeats it.
        logger.exception("smtp.explain_failed", sender=sender)
    return reply
