"""The MAIL ... DATA exchanges under way in every session, and the faxes they hold toward the
daily limit until the store counts them (`OpenTransactions` is the limit's `OpenWork`,
gateway/smtp/limits.py)."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from aiosmtpd.smtp import Envelope

from gateway.smtp.options import MessageOptions
from gateway.smtp.subject import RefusedNumber


@dataclass(eq=False)
class Transaction:
    """One MAIL ... DATA exchange: the sender and the fax numbers accepted so far, in order."""

    sender: str
    auth_user: str | None
    numbers: list[str] = field(default_factory=list)
    # What its addresses' +options ask of the whole message (gateway/smtp/options.py).
    options: MessageOptions = field(default_factory=MessageOptions)
    # Addressed to smtp.subject_address: more numbers come from the Subject at DATA, and a
    # refusal is also explained by mail (gateway/smtp/subject.py, explain.py).
    subject_addressed: bool = False
    refused_numbers: tuple[RefusedNumber, ...] = ()
    # Of its message, once read at DATA: for the explanation of a refusal.
    subject: str = ""
    message_id: str = ""
    # Its numbers count toward the sender's daily limit from memory while it is open: until its
    # job row is committed (the store counts them from then on) or it ends without one.
    open: bool = True
    # Its message is being spooled and committed (the outcome closes it, not the session).
    accepting: bool = False
    # The job its message is being committed as: counted from memory, not from the store,
    # until the transaction is closed (under the daily limit's lock).
    job_id: str | None = None


class OpenTransactions:
    """The transaction of every session, keyed by aiosmtpd's Envelope, which it replaces after
    DATA, RSET and EHLO: the state of a transaction goes with it."""

    def __init__(self) -> None:
        self._transactions: weakref.WeakKeyDictionary[Envelope, Transaction] = (
            weakref.WeakKeyDictionary()
        )

    def begin(self, envelope: Envelope, transaction: Transaction) -> None:
        """MAIL was accepted: `transaction` is the one of `envelope` from now on."""
        self._transactions[envelope] = transaction

    def get(self, envelope: Envelope) -> Transaction | None:
        """The transaction of `envelope`, if MAIL began one."""
        return self._transactions.get(envelope)

    def _open_numbers(self, same: Callable[[Transaction], bool]) -> int:
        """Faxes accepted in the open transactions `same` picks, not yet in the store."""
        return sum(
            len(other.numbers)
            for other in list(self._transactions.values())
            if other.open and same(other)
        )

    def open_for_sender(self, sender: str) -> int:
        """Numbers the open transactions of `sender` (lower case) took (limits.OpenWork)."""
        return self._open_numbers(lambda other: other.sender.lower() == sender)

    def open_for_user(self, user: str) -> int:
        """Numbers the open transactions of login `user` took (limits.OpenWork)."""
        return self._open_numbers(lambda other: other.auth_user == user)

    def committing(self) -> list[str]:
        """Job ids of the open transactions whose rows are being committed."""
        return [
            other.job_id
            for other in list(self._transactions.values())
            if other.open and other.job_id is not None
        ]

    def forget(self, envelope: Envelope | None) -> None:
        """The session of `envelope` ended: its transaction no longer holds any of the limit.

        The envelope itself may outlive the connection for a while (reference cycles in the
        protocol object), so this is not left to the weak mapping. A message being committed
        keeps counting until its outcome is known.
        """
        transaction = self._transactions.get(envelope) if envelope is not None else None
        if transaction is not None and not transaction.accepting:
            transaction.open = False
