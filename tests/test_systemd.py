"""The systemd unit, its office drop-in and the sysusers file: systemd's tools accept them, they
say what we need, and LibreOffice converts under the unit's rules with the drop-in."""

from __future__ import annotations

import ctypes.util
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pypdf import PdfReader

from gateway.config import QueueConfig
from tests.conftest import ROOT
from tests.office_files import needs_libreoffice
from tests.unit_rules import run_under_unit, service_settings

UNIT = ROOT / "systemd" / "fax-gateway.service"
SYSUSERS = ROOT / "systemd" / "fax-gateway.sysusers"
INSTALL_DOC = ROOT / "docs" / "install.md"
# The console script of this checkout's venv stands in for /opt/fax-gateway/venv/bin/fax-gateway.
VENV_SCRIPT = Path(sys.executable).parent / "fax-gateway"

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)
needs_sysusers = pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None, reason="systemd-sysusers is not installed"
)


def directives(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file, each key with every value it was given (in order)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"directive outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def service() -> dict[str, list[str]]:
    return directives(UNIT.read_text())["Service"]


def exec_start_binary() -> str:
    return shlex.split(service()["ExecStart"][0])[0]


def unit_for_verify(directory: Path, binary: Path) -> Path:
    """The unit with ExecStart pointing at `binary`, which verify requires to exist."""
    text = UNIT.read_text().replace(exec_start_binary(), str(binary))
    path = directory / "fax-gateway.service"
    path.write_text(text)
    return path


def verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def problems(result: subprocess.CompletedProcess[str], directory: Path) -> list[str]:
    # verify also reads the units ours refers to (network-online.target...); only lines about
    # our files are ours to fix.
    return [
        line
        for line in result.stderr.splitlines()
        if "fax-gateway" in line or str(directory) in line
    ]


@needs_analyze
def test_unit_verifies(tmp_path: Path) -> None:
    """`systemd-analyze verify` finds no problem in the unit (ExecStart on this venv's script)."""
    if not VENV_SCRIPT.exists():
        pytest.skip(f"{VENV_SCRIPT} is missing: install the package into the venv")
    result = verify(unit_for_verify(tmp_path, VENV_SCRIPT))
    assert result.returncode == 0, result.stderr
    assert problems(result, tmp_path) == []


@needs_analyze
def test_verify_catches_a_missing_binary(tmp_path: Path) -> None:
    """The verify test can fail: an ExecStart binary that does not exist is reported."""
    result = verify(unit_for_verify(tmp_path, tmp_path / "no-such-fax-gateway"))
    assert result.returncode != 0
    assert "no-such-fax-gateway" in result.stderr


@needs_analyze
def test_port25_dropin_verifies(tmp_path: Path) -> None:
    """The drop-in for port 25 shown in the unit's comments is valid and grants only that."""
    if not VENV_SCRIPT.exists():
        pytest.skip(f"{VENV_SCRIPT} is missing: install the package into the venv")
    text = UNIT.read_text()
    block = text[text.index("systemctl edit fax-gateway") :].splitlines()[1:]
    dropin = [line.removeprefix("#").strip() for line in block if line.startswith("#   ")]
    assert dropin == [
        "[Service]",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
    ]
    unit = unit_for_verify(tmp_path, VENV_SCRIPT)
    (tmp_path / "fax-gateway.service.d").mkdir()
    (tmp_path / "fax-gateway.service.d" / "port25.conf").write_text("\n".join(dropin) + "\n")
    result = verify(unit)
    assert result.returncode == 0, result.stderr
    assert problems(result, tmp_path) == []
    report = security(unit, threshold=None).stdout
    assert re.search(r"✗ AmbientCapabilities=", report), report


def security(path: Path, threshold: int | None) -> subprocess.CompletedProcess[str]:
    args = ["systemd-analyze", "security", "--offline=true", "--no-pager"]
    if threshold is not None:
        args.append(f"--threshold={threshold}")
    return subprocess.run([*args, str(path)], capture_output=True, text=True, timeout=60)


@needs_analyze
def test_exposure_is_low(tmp_path: Path) -> None:
    """`systemd-analyze security` rates the unit's exposure 2.0 or lower (of 10)."""
    if not VENV_SCRIPT.exists():
        pytest.skip(f"{VENV_SCRIPT} is missing: install the package into the venv")
    result = security(unit_for_verify(tmp_path, VENV_SCRIPT), threshold=20)
    assert result.returncode == 0, result.stdout + result.stderr


def test_unit_has_what_the_gateway_needs() -> None:
    """Type=notify with the watchdog, the user, directories, secrets file and restart policy."""
    sections = directives(UNIT.read_text())
    svc = sections["Service"]
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "User": "fax-gateway",
        "Group": "fax-gateway",
        "StateDirectory": "fax-gateway",
        "ConfigurationDirectory": "fax-gateway",
        "EnvironmentFile": "-/etc/fax-gateway/env",
        "Restart": "on-failure",
        "WatchdogSec": "30",
        "UMask": "0027",
    }
    assert {key: svc.get(key, [None])[-1] for key in expected} == expected
    command = shlex.split(svc["ExecStart"][0])
    assert command[0].startswith("/") and command[0].endswith("/bin/fax-gateway")
    assert command[1:] == ["serve", "--config", "/etc/fax-gateway/gateway.toml"]
    assert "multi-user.target" in sections["Install"]["WantedBy"]
    assert int(svc["RestartSec"][0]) >= 1


def test_unit_sets_a_memory_budget() -> None:
    """MemoryHigh (throttle) below MemoryMax (kill and restart), both set."""
    svc = service()
    sizes = {"K": 1024, "M": 1024**2, "G": 1024**3}

    def size(value: str) -> int:
        return int(value[:-1]) * sizes[value[-1]] if value[-1] in sizes else int(value)

    high, limit = size(svc["MemoryHigh"][-1]), size(svc["MemoryMax"][-1])
    assert 256 * 1024**2 <= high < limit


def test_stop_timeout_covers_the_shutdown_bound() -> None:
    """systemd waits longer than the gateway's own stop bound before it sends SIGKILL."""
    stop = int(service()["TimeoutStopSec"][0])
    assert stop >= 2 * QueueConfig().shutdown_timeout_seconds


def test_unit_is_hardened() -> None:
    """Every hardening directive the issue asks for is set, with no capability by default."""
    svc = service()
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "RestrictNamespaces": "yes",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "",
    }
    assert {key: svc.get(key, [None])[-1] for key in expected} == expected
    assert svc["SystemCallFilter"][0] == "@system-service"
    assert "AmbientCapabilities" not in svc


def test_install_doc_matches_unit() -> None:
    """docs/install.md installs the program where the unit's ExecStart looks for it."""
    doc = INSTALL_DOC.read_text()
    binary = exec_start_binary()
    venv = binary.removesuffix("/bin/fax-gateway")
    assert f"python3 -m venv {venv}" in doc
    assert binary in doc
    assert "fax-gateway.sysusers" in doc and "systemctl enable --now fax-gateway" in doc


def sysusers_entry() -> list[str]:
    lines = [
        line
        for line in SYSUSERS.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert len(lines) == 1, lines
    return shlex.split(lines[0])


def test_sysusers_fields() -> None:
    """One 'u' line: the unit's user, an automatic id, its home in the state dir, no login."""
    kind, name, uid, _gecos, home, shell = sysusers_entry()
    svc = service()
    assert (kind, uid, home, shell) == ("u", "-", "/var/lib/fax-gateway", "/usr/sbin/nologin")
    assert name == svc["User"][-1] == svc["Group"][-1]


@needs_sysusers
def test_sysusers_creates_the_user(tmp_path: Path) -> None:
    """systemd-sysusers, on an empty root, creates the user and its group from the file."""
    (tmp_path / "etc").mkdir()
    result = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", "-"],
        input=SYSUSERS.read_text(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    passwd = {
        line.split(":")[0]: line.split(":")
        for line in (tmp_path / "etc/passwd").read_text().splitlines()
    }
    user = passwd["fax-gateway"]
    assert user[4:] == ["fax-gateway daemon", "/var/lib/fax-gateway", "/usr/sbin/nologin"]
    groups = {
        line.split(":")[0]: line.split(":")[2]
        for line in (tmp_path / "etc/group").read_text().splitlines()
    }
    assert groups["fax-gateway"] == user[3]
    # A system user: below the first regular uid.
    assert int(user[2]) < 1000


# Runs in a child process: PR_SET_MDWE is one-way for the process that sets it.
MDWE_PROBE = textwrap.dedent(
    """
    import ctypes, io, mmap, sqlite3, ssl, sys
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        print("unsupported")
        sys.exit(0)
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except OSError:
        pass
    else:
        sys.exit("W+X memory was allowed: the probe proves nothing")

    import aiohttp, aiosmtpd.smtp, aiosmtplib, boto3, img2pdf, jinja2, phonenumbers
    import prometheus_client, pypdf, structlog
    import pypdfium2 as pdfium
    from PIL import Image
    import gateway.cli, gateway.daemon, gateway.ops.health, gateway.ops.metrics
    from gateway.config import config_from_dict

    config_from_dict({
        "http": {"public_url": "https://fax.example.com", "webhook_token": "x" * 20},
        "voxtelesys": {"api_key": "key", "from_number": "+12015550100"},
        "relay": {"from_address": "fax@example.com"},
    }, env={})
    page = Image.new("L", (1700, 2200), 255)
    out = io.BytesIO()
    page.save(out, format="PNG")
    # Fax images: bilevel TIFF, Group 4 (libtiff).
    out = io.BytesIO()
    page.convert("1").save(out, format="TIFF", compression="group4")
    pdf = io.BytesIO()
    page.convert("RGB").save(pdf, format="PDF")
    data = pdf.getvalue()
    pypdf.PdfReader(io.BytesIO(data)).pages[0].extract_text()
    img2pdf.convert(out.getvalue())
    bitmap = pdfium.PdfDocument(data)[0].render(scale=0.5).to_pil()
    # From a file object pdfium reads through a ctypes callback: libffi closures.
    assert len(pdfium.PdfDocument(io.BytesIO(data))) == 1
    callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda n: n + 1)
    assert callback(41) == 42
    sqlite3.connect(":memory:").execute("select 1")
    ssl.create_default_context()
    print("ok", bitmap.size)
    """
)


def test_libraries_need_no_write_execute_memory() -> None:
    """Our native libraries work where W+X memory is refused (MemoryDenyWriteExecute=yes)."""
    result = subprocess.run(
        [sys.executable, "-c", MDWE_PROBE], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    if result.stdout.strip() == "unsupported":
        pytest.skip("kernel has no PR_SET_MDWE (Linux 6.3+)")
    assert result.stdout.startswith("ok"), result.stdout


# -- LibreOffice under the unit ---------------------------------------------------------------

OFFICE_DROPIN = ROOT / "systemd" / "fax-gateway.service.d" / "office-conversion.conf"


@needs_analyze
def test_office_dropin_verifies_and_allows_only_the_conversions_namespaces(
    tmp_path: Path,
) -> None:
    """With the office drop-in the unit still verifies and rates 2.0 or lower; systemd reads it
    as user, network and mount namespaces and the mount calls allowed, nothing else."""
    if not VENV_SCRIPT.exists():
        pytest.skip(f"{VENV_SCRIPT} is missing: install the package into the venv")
    unit = unit_for_verify(tmp_path, VENV_SCRIPT)
    (tmp_path / "fax-gateway.service.d").mkdir()
    shutil.copy(OFFICE_DROPIN, tmp_path / "fax-gateway.service.d" / OFFICE_DROPIN.name)
    result = verify(unit)
    assert result.returncode == 0, result.stderr
    assert problems(result, tmp_path) == []
    report = security(unit, threshold=20)
    assert report.returncode == 0, report.stdout + report.stderr
    for kind in ("user", "net", "mnt"):
        assert re.search(rf"✗ RestrictNamespaces=~{kind}\b", report.stdout), report.stdout
    for kind in ("pid", "uts", "cgroup", "ipc"):
        assert re.search(rf"✓ RestrictNamespaces=~{kind}\b", report.stdout), report.stdout
    assert re.search(r"✗ SystemCallFilter=~@mount\b", report.stdout), report.stdout
    assert re.search(r"✓ SystemCallFilter=~@privileged\b", report.stdout), report.stdout


def _conversion_program() -> str:
    return textwrap.dedent(
        """
        import json, os
        from pathlib import Path
        from gateway.config import DocumentsConfig
        from gateway.document.mime import Attachment, DocumentError
        from gateway.document.office import OfficeConverter
        from tests import office_files

        state = Path(os.environ["FAXGW_STATE_DIRECTORY"])
        converter = OfficeConverter(DocumentsConfig(convert_office=True), hidden=[state])
        result = {"uid": os.getuid(), "missing": converter.missing()}
        document = Attachment("report.docx", office_files.DOCX, office_files.docx("Under unit"))
        try:
            pdf = converter.convert(document)
        except DocumentError as exc:
            result["refused"] = str(exc)
        else:
            result["pdf"] = pdf.hex()
        print(json.dumps(result))
        """
    )


@pytest.mark.slow
@needs_analyze
@needs_libreoffice
@pytest.mark.parametrize("dropin", [False, True], ids=["unit-alone", "with-office-dropin"])
def test_libreoffice_converts_under_the_units_rules_only_with_the_dropin(dropin: bool) -> None:
    """As nobody, under the unit's file system, namespace, system call, W^X and socket rules
    (tests/unit_rules.py), a DOCX becomes a PDF with its text with the office drop-in; without
    it the converter reports its namespaces missing and the file is refused."""
    if os.geteuid() != 0:
        pytest.skip("the unit's rules are set up as root (a mount namespace), then nobody")
    if ctypes.util.find_library("seccomp") is None:
        pytest.skip("*** libseccomp is missing (Debian: libseccomp2): this test SKIPS ***")
    settings = service_settings(UNIT, *([OFFICE_DROPIN] if dropin else []))
    result = run_under_unit(settings, _conversion_program(), timeout=180, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    said = json.loads(result.stdout.strip().splitlines()[-1])
    assert said["uid"] == 65534
    if dropin:
        assert said["missing"] is None
        pdf = bytes.fromhex(said["pdf"])
        assert pdf.startswith(b"%PDF-")
        assert "Under unit" in PdfReader(io.BytesIO(pdf)).pages[0].extract_text()
    else:
        assert "unshare failed: Operation not permitted" in said["missing"]
        assert "report.docx cannot be converted" in said["refused"]
