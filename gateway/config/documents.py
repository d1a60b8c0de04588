"""[documents], the budget of a document worker and the conversion of office files, and
[cover], the cover page.
"""

from __future__ import annotations

from pydantic import Field

from gateway.config.values import Section


class DocumentsConfig(Section):
    """Reading documents: the budget of a document worker process (gateway/document/pool.py;
    reading one message at DATA, or building one job's document, may cost at most this much),
    and the conversion of office files."""

    # Address space of one worker (RLIMIT_AS); Python and the document libraries take ~110 MB
    # of it before any document. Past it: 554 5.3.4 at DATA, a failed job at prepare.
    worker_memory_mb: int = Field(default=768, ge=256, le=65536)
    # Wall-clock time of one request; past it the worker is killed, with the same outcome.
    worker_timeout_seconds: float = Field(default=120.0, gt=0, le=3600)
    # Office files and HTML attachments become PDF with LibreOffice (gateway/document/office.py):
    # off by default, since every such file is then opened by a large office suite. LibreOffice
    # runs as its own process group under its own time limit, not under the worker's memory
    # budget (its address space alone is larger).
    convert_office: bool = False
    convert_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    max_concurrent_conversions: int = Field(default=2, ge=1, le=32)
    # Office files one message may carry: more are refused (554 5.6.0), not each given
    # LibreOffice's time.
    max_office_files: int = Field(default=5, ge=1, le=100)
    # The largest file LibreOffice may write (RLIMIT_FSIZE): a document whose PDF would be
    # larger is refused (554 5.6.0).
    convert_max_output_mb: int = Field(default=100, ge=1, le=4096)
    # The LibreOffice program: a name looked up in PATH, or an absolute path.
    libreoffice: str = Field(default="soffice", min_length=1)


class CoverConfig(Section):
    enabled: bool = False
    body_only: bool = False
    template: str = "cover.txt.j2"

    def for_message(self, enabled: bool | None, template: str | None) -> CoverConfig:
        """These settings as one message has them: its own cover choice and template (from an
        address option or [senders]) where it has one."""
        changes: dict[str, object] = {}
        if enabled is not None:
            changes["enabled"] = enabled
        if template is not None:
            changes["template"] = template
        return self.model_copy(update=changes) if changes else self
