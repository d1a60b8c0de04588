"""Office files to PDF with LibreOffice: one headless subprocess per file, fenced in.

Opening a stranger's Word file with an office suite is the riskiest thing the gateway can do,
so it is off unless `documents.convert_office` is on, and each conversion runs

- in its own subprocess (`soffice --headless --convert-to pdf`), never in the gateway process,
  with `documents.convert_timeout_seconds` to finish: past it the whole process group is
  killed and the file is refused;
- with a private, throw-away profile (`-env:UserInstallation=file://<temp dir>`), made for this
  one file with macros switched off, so no state, no macro and no recovery data survives from
  one document to the next, and two conversions never share a profile (LibreOffice refuses to
  run twice on one profile anyway);
- without network: in a new network namespace (`unshare --net`, with `--map-root-user`, which
  needs unprivileged user namespaces) that has no interface but a loopback that is down, so a
  linked image, an OLE link or an HTML page cannot fetch anything or reach anything on our side;
- without other people's files: in a new mount namespace too (`--mount`), where fence.py
  hides data.dir, the configuration and every path it names, /root, /home and the temp
  directory, so a `file://` link reads nothing of theirs; and with links never updated on
  loading (the profile's link-update mode). A machine where these namespaces cannot be made
  counts as one without the converter: the file is refused rather than converted with network
  or files;
- with each file it writes bounded by `documents.convert_max_output_mb` (RLIMIT_FSIZE), so a
  document cannot fill the disk: LibreOffice fails to write a larger PDF, and the file is
  refused like one it cannot read (a larger picture inside a document is left out);
- at most `documents.max_concurrent_conversions` at once (a slot is waited for at most the
  timeout; then `ConversionBusy`, which SMTP answers with 451).

`missing()` says why the converter cannot run (not installed, no namespace), for check-config,
/readyz and the refusal naming it. Blocking by design: callers use `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import zipfile
from collections.abc import Sequence
from pathlib import Path

from gateway import log
from gateway.config import Config, DocumentsConfig
from gateway.document.fence import SCRIPT, hidden_paths, mount_words
from gateway.document.kinds import extension, office_bytes_match, office_name
from gateway.document.mime import (
    CORRUPT,
    TOO_COSTLY,
    UNSUPPORTED,
    Attachment,
    DocumentError,
    one_line_ascii,
)

logger = log.get_logger(__name__)

# What makes the namespaces: a network with no interface but a loopback that is down, and
# mounts of its own (fence.py).
UNSHARE = ("unshare", "--net", "--mount", "--map-root-user", "--")
# OOXML and OpenDocument files are ZIPs that LibreOffice unpacks in memory, outside the document
# workers' memory budget: one whose members unpack to more than this (a zip bomb: a megabyte of
# mail, gigabytes of XML) is refused before LibreOffice opens it. Pictures, the bulk of a real
# document, are stored about as large as they are packed.
MAX_UNPACKED_BYTES = 512 * 1024 * 1024
_PROBE_TIMEOUT_SECONDS = 10.0

# Macros off, whatever the document asks: "very high" security and no execution at all.
_PROFILE_SETTINGS = """<?xml version="1.0" encoding="UTF-8"?>
<oor:items xmlns:oor="http://openoffice.org/2001/registry"
 xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<item oor:path="/org.openoffice.Office.Common/Security/Scripting"><prop oor:name="MacroSecurityLevel" oor:op="fuse"><value>3</value></prop></item>
<item oor:path="/org.openoffice.Office.Common/Security/Scripting"><prop oor:name="DisableMacrosExecution" oor:op="fuse"><value>true</value></prop></item>
<item oor:path="/org.openoffice.Office.Common/Security"><prop oor:name="BlockUntrustedRefererLinks" oor:op="fuse"><value>true</value></prop></item>
<item oor:path="/org.openoffice.Office.Writer/Content/Update"><prop oor:name="Link" oor:op="fuse"><value>0</value></prop></item>
<item oor:path="/org.openoffice.Office.Calc/Content/Update"><prop oor:name="Link" oor:op="fuse"><value>1</value></prop></item>
</oor:items>
"""  # noqa: E501
# Links never updated on loading: 0 is "never" for Writer (SwLinkUpdateMode), 1 for Calc
# (ScLkUpdMode); a linked section or sheet then shows what the file was saved with.


class ConversionBusy(Exception):
    """No conversion slot became free in time: the message should be tried again later."""


class OfficeConverter:
    """Runs LibreOffice for one gateway; shared by the SMTP handler and the prepare worker."""

    def __init__(self, config: DocumentsConfig, *, hidden: Sequence[Path] = ()) -> None:
        self.config = config
        # The gateway's own paths a conversion must not see (fence.hidden_paths), beside the
        # ones every conversion hides.
        self.hidden = tuple(hidden)
        self._slots = threading.BoundedSemaphore(config.max_concurrent_conversions)

    @classmethod
    def for_gateway(cls, config: Config, config_path: Path | None = None) -> OfficeConverter:
        """The converter of a gateway on `config` (read from `config_path`, if from a file)."""
        return cls(config.documents, hidden=hidden_paths(config, config_path))

    @property
    def enabled(self) -> bool:
        return self.config.convert_office

    def reconfigure(self, config: DocumentsConfig, hidden: Sequence[Path] | None = None) -> None:
        """A reloaded configuration (SIGHUP); the number of slots stays until a restart."""
        self.config = config
        if hidden is not None:
            self.hidden = tuple(hidden)

    def program(self) -> str | None:
        """The LibreOffice executable's path, or None if it cannot be found."""
        return shutil.which(self.config.libreoffice)

    def missing(self) -> str | None:
        """Why no conversion can run here, in one line; None when it can."""
        if self.program() is None:
            return (
                f"the converter LibreOffice ({self.config.libreoffice!r}) is not installed on"
                " the gateway"
            )
        return self._namespace_missing()

    def convert(self, attachment: Attachment) -> bytes:
        """The PDF LibreOffice makes of `attachment`; DocumentError naming it if it cannot."""
        label = attachment.label
        if not office_bytes_match(attachment.content_type, attachment.data):
            name = office_name(attachment.content_type)
            raise DocumentError(f"{label} is damaged or not a {name} file", kind=CORRUPT)
        unpacked = _unpacked_size(attachment.data)
        if unpacked > MAX_UNPACKED_BYTES:
            raise DocumentError(
                f"{label} unpacks to {unpacked // 2**20} MB; at most"
                f" {MAX_UNPACKED_BYTES // 2**20} MB can be converted",
                kind=TOO_COSTLY,
            )
        reason = self.missing()
        if reason is not None:
            raise DocumentError(f"{label} cannot be converted: {reason}", kind=UNSUPPORTED)
        timeout = self.config.convert_timeout_seconds
        if not self._slots.acquire(timeout=timeout):
            raise ConversionBusy(f"no conversion slot free within {timeout:g} s")
        try:
            return self._run(attachment, label, timeout)
        finally:
            self._slots.release()

    def _run(self, attachment: Attachment, label: str, timeout: float) -> bytes:
        program = self.program()
        assert program is not None  # checked by missing()
        with tempfile.TemporaryDirectory(prefix="faxgw-convert-") as temp:
            root = Path(temp)
            profile = root / "profile"
            (profile / "user").mkdir(parents=True)
            (profile / "user" / "registrymodifications.xcu").write_text(_PROFILE_SETTINGS)
            source = root / f"document{extension(attachment.content_type)}"
            source.write_bytes(attachment.data)
            out = root / "out"
            out.mkdir()
            command = [
                *self._fenced(root, program),
                program,
                f"-env:UserInstallation={profile.as_uri()}",
                "--headless",
                "--invisible",
                "--norestore",
                "--nolockcheck",
                "--nodefault",
                "--nologo",
                "--convert-to",
                "pdf",
                "--outdir",
                str(out),
                str(source),
            ]
            environment = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(root),
                "TMPDIR": str(root),
                "LANG": "C.UTF-8",
                "SAL_USE_VCLPLUGIN": "svp",
            }
            with subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=environment,
                cwd=root,
                start_new_session=True,  # its own process group, killed whole on a timeout
            ) as process:
                try:
                    output, _ = process.communicate(timeout=timeout)
                except subprocess.TimeoutExpired:
                    _kill_group(process)
                    logger.warning("document.convert_timeout", file=label, seconds=timeout)
                    raise DocumentError(
                        f"{label} took longer than {timeout:g} s to convert to PDF",
                        kind=UNSUPPORTED,
                    ) from None
                finally:
                    _kill_group(process)  # helpers it left behind (none, normally)
            result = out / f"{source.stem}.pdf"
            data = result.read_bytes() if result.is_file() else b""
            if process.returncode != 0 or not data.startswith(b"%PDF-"):
                said = one_line_ascii(output.decode("utf-8", "replace"), limit=200)
                logger.warning(
                    "document.convert_failed", file=label, status=process.returncode, output=said
                )
                raise DocumentError(
                    f"{label}: LibreOffice could not convert this"
                    f" {office_name(attachment.content_type)} file to PDF",
                    kind=CORRUPT,
                )
            logger.info("document.converted", file=label, size=len(data))
            return data

    @property
    def _output_limit(self) -> int:
        return self.config.convert_max_output_mb * 1024 * 1024

    def _fenced(self, root: Path, program: str) -> list[str]:
        """The command before LibreOffice's own: its namespaces, what fence.py hides in them
        (`root`, the work directory, stays in view), and the size limit of its files."""
        words = mount_words(self.hidden, program)
        blocks = str(self._output_limit // 512)
        return [*UNSHARE, "sh", "-c", SCRIPT, "sh", str(root), blocks, *words, "--"]

    def _namespace_missing(self) -> str | None:
        """Why the namespaces of a conversion cannot be made here; None when they can."""
        if shutil.which(UNSHARE[0]) is None:
            return (
                "unshare (util-linux) is not installed, so LibreOffice cannot run without"
                " network and without the gateway's files"
            )
        program = self.program() or "soffice"
        try:
            with tempfile.TemporaryDirectory(prefix="faxgw-convert-") as temp:
                root = Path(temp)
                (root / "profile").mkdir()
                done = subprocess.run(
                    [*self._fenced(root, program), "true"],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=_PROBE_TIMEOUT_SECONDS,
                    check=False,
                )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"no private namespaces for LibreOffice: {exc}"
        if done.returncode != 0:
            said = one_line_ascii(done.stderr.decode("utf-8", "replace"), limit=200)
            return (
                "no private namespaces for LibreOffice (unshare --net --mount --map-root-user"
                f" and its mounts failed: {said or done.returncode}); user, network and mount"
                " namespaces must be allowed"
            )
        return None


def _unpacked_size(data: bytes) -> int:
    """What the members of a ZIP file say they unpack to (0 for a file that is not a ZIP, or
    one LibreOffice will find damaged itself)."""
    if not data.startswith(b"PK"):
        return 0
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return sum(member.file_size for member in archive.infolist())
    except (zipfile.BadZipFile, ValueError, OSError):
        return 0


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
