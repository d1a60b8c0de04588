"""A mail's privacy mode (what it carries of a fax: `attach`), shared by [notify], [inbound],
its routes and [senders], and the password of an encrypted PDF, read from where the file
says it is kept.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import PrivateAttr, SecretStr, ValidationInfo, model_validator

from gateway.config.values import Section

# What a mail carries of a fax (delivery reports, inbound faxes): the document as a PDF, the
# document as a PDF encrypted with a password (AES-256, PDF 2.0 / R6), or no document at all.
AttachMode = Literal["pdf", "encrypted-pdf", "none"]
ATTACH_PDF = "pdf"
ATTACH_ENCRYPTED = "encrypted-pdf"
ATTACH_NONE = "none"

# Shortest password an encrypted PDF is locked with: a short one is guessed offline in hours.
MIN_PDF_PASSWORD_CHARS = 8
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class PrivacySection(Section):
    """A privacy mode: `attach`, and for "encrypted-pdf" where its password is kept.

    The password is never written in the configuration itself: password_env names an
    environment variable, password_file a file (read at load and at each reload, trailing
    newline dropped). It is held as a SecretStr (`password`) and registered with the log
    redactor with the other secrets. `attach` None (senders, routes) means: as the section
    above says.
    """

    attach: AttachMode | None = None
    password_env: str | None = None
    password_file: Path | None = None
    _password: SecretStr | None = PrivateAttr(default=None)

    @property
    def password(self) -> SecretStr | None:
        return self._password

    @model_validator(mode="after")
    def _password_source(self, info: ValidationInfo) -> PrivacySection:
        named = [key for key in ("password_env", "password_file") if getattr(self, key)]
        if self.attach != ATTACH_ENCRYPTED:
            if named:
                raise ValueError(f"{named[0]} is only used with attach = 'encrypted-pdf'")
            return self
        if len(named) != 1:
            raise ValueError(
                "attach = 'encrypted-pdf' needs its password from password_env or password_file"
                " (one of them; never the password itself)"
            )
        env = (info.context or {}).get("env")
        self._password = SecretStr(_read_password(self.password_env, self.password_file, env))
        return self


def _read_password(variable: str | None, path: Path | None, env: Mapping[str, str] | None) -> str:
    """The password from the environment or its file; errors name where, never the value."""
    if variable is not None:
        if not _ENV_NAME.fullmatch(variable):
            raise ValueError(f"password_env {variable!r} is not an environment variable name")
        value = (os.environ if env is None else env).get(variable, "")
        where = f"${variable}"
    else:
        assert path is not None
        try:
            value = path.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ValueError(f"password_file {str(path)!r} cannot be read: {reason}") from None
        where = f"password_file {str(path)!r}"
    if not value:
        raise ValueError(f"{where} is empty or not set: it must hold the PDF password")
    if len(value) < MIN_PDF_PASSWORD_CHARS:
        raise ValueError(f"the password in {where} is shorter than {MIN_PDF_PASSWORD_CHARS}")
    return value
