"""What a mail may carry of a fax: the privacy modes of delivery reports and inbound faxes.

`attach` is set in [notify] for delivery reports (a sender's [senders."x"] overrides it) and in
[inbound] for received faxes (a route's [inbound.routes."+1..."] overrides it):

- "pdf": the document as a PDF; inbound mails show page 1 as a picture in the HTML part.
- "encrypted-pdf": every PDF the mail carries (document, transmission report) is locked with
  the configured password: AES-256 with the PDF 2.0 security handler (V5, R6), which every
  current reader opens after asking for the password. No page-1 picture, and no TIFF (the
  configuration refuses attach_format "tiff" or "both" with it): only a PDF can be locked.
- "none": no document, no picture: the mail says that a fax arrived or was delivered, its
  number, pages and time, and where to see it (the status page, or the administrator).

The password goes into no mail and no log line (Config.secrets() hands it to the redactor).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from pydantic import SecretStr
from pypdf import PdfReader, PdfWriter

from gateway.config import ATTACH_ENCRYPTED, ATTACH_NONE, ATTACH_PDF, Config
from gateway.document import kinds
from gateway.mailout.message import MailAttachment


class PrivacyError(Exception):
    """A file cannot go in the mail the way its privacy mode asks (a TIFF to encrypt)."""


@dataclass(frozen=True)
class Privacy:
    """The privacy mode one mail is composed in."""

    attach: str = ATTACH_PDF
    password: SecretStr | None = None

    @property
    def carries_document(self) -> bool:
        """Whether the document, or a picture of it, may be in the mail at all."""
        return self.attach != ATTACH_NONE

    @property
    def shows_preview(self) -> bool:
        """Whether page 1 may be shown unencrypted in the mail's HTML part."""
        return self.attach == ATTACH_PDF

    @property
    def encrypted(self) -> bool:
        return self.attach == ATTACH_ENCRYPTED


def report_privacy(config: Config, sender: str) -> Privacy:
    """The mode of a delivery report to `sender`: theirs ([senders."x"]), else [notify]'s."""
    own = config.senders.get(sender.lower())
    if own is not None and own.attach is not None:
        return Privacy(own.attach, own.password)
    return Privacy(config.notify.attach, config.notify.password)


def inbound_privacy(config: Config, to_number: str) -> Privacy:
    """The mode of the mail of a fax to `to_number`: its route's, else [inbound]'s."""
    route = config.inbound.route(to_number)
    if route is not None and route.attach is not None:
        return Privacy(route.attach, route.password)
    return Privacy(config.inbound.attach, config.inbound.password)


def protect(attachment: MailAttachment, privacy: Privacy) -> MailAttachment:
    """`attachment` as the mode lets it go: as it is, or as an encrypted PDF.

    Callers leave the document (and pictures of it) out under "none" before they get here:
    `carries_document` says so. Raises PrivacyError for a file that is not a PDF under
    "encrypted-pdf": it is left out, never sent in clear.
    """
    if not privacy.encrypted:
        return attachment
    if attachment.content_type != kinds.PDF or privacy.password is None:
        raise PrivacyError(
            f"{attachment.content_type} cannot be encrypted: only a PDF can go with"
            " attach = 'encrypted-pdf'"
        )
    data = encrypt_pdf(attachment.data, privacy.password.get_secret_value())
    return MailAttachment(attachment.filename, attachment.content_type, data)


def encrypt_pdf(data: bytes, password: str) -> bytes:
    """`data` (a PDF) locked with `password`: AES-256, revision 6, a PDF 2.0 file.

    Strings and streams are encrypted, metadata included (a title or author names no patient
    in clear). Blocking: run in a thread.
    """
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    # R6 is PDF 2.0's security handler: say so in the header, as readers expect.
    writer.pdf_header = b"%PDF-2.0"
    writer.encrypt(user_password=password, algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def status_page_url(config: Config) -> str | None:
    """Where a person sees a fax that was not attached: the status page, when it is served.

    None means the mail says "ask your administrator".
    """
    if not config.ui.enabled:
        return None
    return f"{config.http.public_url}/ui/"
