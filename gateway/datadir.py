"""The layout of data.dir: every file and folder the gateway keeps there, named in one place.

    store.db      the SQLite store (gateway/store/)
    secret.key    the signing secret of keys and links (gateway/storage/secret.py)
    spool/        each job's raw message as received, until cleanup (gateway/store/spool.py)
                  and the PDFs its office attachments became at DATA
    documents/    each job's assembled document, until cleanup (gateway/outbound/prepare.py)
    media/        documents served by local storage (gateway/storage/local.py)
    inbound/      received faxes' documents while their mail is on its way (gateway/inbound/)
    dead-letter/  those whose mail could not be delivered, for an operator
    outbox/       every mail the gateway sends, as a file until it is sent (gateway/mailout/)

These names are part of an installed gateway's state: renaming one strands what is there.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DataDir:
    """The paths under one data.dir (`config.data.dir`); nothing is created by naming it."""

    root: Path

    def free_bytes(self) -> int:
        """Space left for the gateway on data.dir's file system (0 if it cannot be read).

        A data.dir not made yet is measured where it will be: its nearest existing parent.
        """
        place = self.root
        while not place.exists() and place.parent != place:
            place = place.parent
        try:
            return shutil.disk_usage(place).free
        except OSError:
            return 0

    @property
    def store(self) -> Path:
        return self.root / "store.db"

    @property
    def secret(self) -> Path:
        return self.root / "secret.key"

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def documents(self) -> Path:
        return self.root / "documents"

    @property
    def media(self) -> Path:
        return self.root / "media"

    @property
    def inbound(self) -> Path:
        return self.root / "inbound"

    @property
    def dead_letter(self) -> Path:
        return self.root / "dead-letter"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"
