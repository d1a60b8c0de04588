"""The rules the shipped systemd unit puts on the gateway, applied to one child process without
systemd (the tests have no systemd to start the unit), the way systemd 252 applies them.

`service_settings(unit, *dropins)` reads the [Service] settings of the unit with its drop-ins
(in systemd's order: the unit, then each drop-in). `RULES` is a Python program that a test runs
as root, with a JSON document of those settings and a program of its own to run under them
(`run_under_unit`). In its own mount namespace it makes the file system what the unit's
settings make it (ProtectSystem=strict: every mount read-only but /dev, /proc and /sys;
ProtectKernelTunables: /proc/sys and /sys read-only; ProtectHome=yes: /home, /root and /run/user
empty and inaccessible; PrivateTmp=yes: a new, empty /tmp; StateDirectory=: its directory, the
only writable one), becomes the unprivileged user `nobody` with no supplementary groups, sets
the unit's UMask= and NoNewPrivileges=, and loads the seccomp filters systemd loads for
SystemCallFilter= (with SystemCallErrorNumber=), RestrictNamespaces=, MemoryDenyWriteExecute=
and RestrictAddressFamilies=, before it runs the test's program. The system call groups come
from this machine's `systemd-analyze syscall-filter`, so a group means what systemd means by it.

The interpreter, its venv and this checkout stay visible where ProtectHome= or PrivateTmp= would
hide them (on a test machine they may be under /root or /tmp; an installed gateway's are under
/opt or /usr), as BindReadOnlyPaths= would keep them.
Not reproduced: ProtectProc= (a new /proc would need a new PID namespace), PrivateDevices= and
the capability bounding set (nobody has no capabilities anyway).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# systemd's setting names, as the child reads them (the last value wins, but for the lists).
LISTS = ("SystemCallFilter", "RestrictNamespaces")


def service_settings(unit: Path, *dropins: Path) -> dict[str, list[str]]:
    """Every [Service] assignment of the unit and its drop-ins, in order, by key (an empty
    assignment of a list setting resets it, as in systemd)."""
    settings: dict[str, list[str]] = {}
    for path in (unit, *dropins):
        section = None
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line
                continue
            if section != "[Service]":
                continue
            key, _, value = line.partition("=")
            key, value = key.strip(), value.strip()
            if key in LISTS and value:
                settings.setdefault(key, []).append(value)
            else:
                settings[key] = [value] if value else []
    return settings


def syscall_groups() -> dict[str, list[str]]:
    """systemd's system call groups ("@system-service": its members, groups included)."""
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in out.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not raw.startswith((" ", "\t")) and line.startswith("@"):
            current = groups.setdefault(line.split()[0], [])
        elif current is not None:
            current.append(line.split()[0])
    return groups


def run_under_unit(
    settings: dict[str, list[str]], program: str, *, timeout: float, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """`program` (Python source) run by this interpreter under the unit's rules; must be root."""
    keep = [sys.base_prefix, sys.prefix, str(ROOT)]
    document = {
        "settings": settings,
        "groups": syscall_groups(),
        "program": program,
        "keep": keep,
    }
    return subprocess.run(
        [sys.executable, "-c", RULES],
        input=json.dumps(document),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=_environment(),
    )


def _environment() -> dict[str, str]:
    """What systemd gives a service of User=nobody (no HOME of its own: nobody's does not
    exist), plus where this checkout's modules are."""
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/nonexistent",
        "USER": "nobody",
        "LOGNAME": "nobody",
        "SHELL": "/usr/sbin/nologin",
        "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT)),
        "PYTHONUNBUFFERED": "1",
    }


# Runs in the child, as root until it has set the file system up. Reads its JSON on stdin.
RULES = r"""
import ctypes, ctypes.util, errno, json, os, sys

doc = json.load(sys.stdin)
settings, groups = doc["settings"], doc["groups"]
libc = ctypes.CDLL(None, use_errno=True)

def last(key, default=""):
    values = settings.get(key) or [default]
    return values[-1]

def check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")

# -- the file system -------------------------------------------------------------------------
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
CLONE_NEWNS = 0x00020000

def mount(source, target, fstype, flags, data=None):
    check(libc.mount(source and source.encode(), target.encode(), fstype and fstype.encode(),
                     ctypes.c_ulong(flags), data and data.encode()), f"mount {target}")

check(libc.unshare(CLONE_NEWNS), "unshare")
mount(None, "/", None, MS_REC | MS_PRIVATE)
API = ("/dev", "/proc", "/sys")
points = []
with open("/proc/self/mountinfo") as info:
    for line in info:
        fields = line.split()
        point = fields[4].encode().decode("unicode_escape")
        options = fields[5].split(",")
        points.append((point, options))
FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}
def read_only(point, options):
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY
    for name in options:
        flags |= FLAGS.get(name, 0)
    try:
        mount(None, point, None, flags)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.EACCES, errno.EINVAL):
            raise
strict = last("ProtectSystem") == "strict"
tunables = last("ProtectKernelTunables") == "yes"
for point, options in points:
    api = any(point == a or point.startswith(a + "/") for a in API)
    if (strict and not api) or (tunables and (point == "/sys" or point.startswith("/proc/sys"))):
        read_only(point, options)
if tunables:
    mount("/proc/sys", "/proc/sys", None, MS_BIND | MS_REC)
    read_only("/proc/sys", [])
# What the test runs stays in view wherever it is (the interpreter, its venv, the checkout:
# under /root or /tmp on a test machine; an installed gateway's are in /opt or /usr), as a
# BindReadOnlyPaths= would keep them: held open now, bound back over what hides them below.
keep = sorted({os.path.realpath(p) for p in doc["keep"]}, key=len)
held = {p: os.open(p, os.O_RDONLY | os.O_DIRECTORY) for p in keep}
hidden = []
if last("ProtectHome") == "yes":
    for home in ("/home", "/root", "/run/user"):
        if os.path.isdir(home):
            inside = any(p.startswith(home + "/") for p in keep)
            mode = "mode=711" if inside else "mode=000"
            mount("tmpfs", home, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, mode)
            hidden.append(home)
if last("PrivateTmp") == "yes":
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    hidden.append("/tmp")
bound = []
for path, fd in held.items():
    under = any(path.startswith(h + "/") for h in hidden)
    if under and not any(path.startswith(b + "/") for b in bound):
        os.makedirs(path, mode=0o755, exist_ok=True)
        mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        read_only(path, [])
        bound.append(path)
    os.close(fd)
# StateDirectory=: a directory of the service user's own (here in the private /tmp, since the
# real /var/lib is read-only and must stay so).
state = os.path.join("/tmp", last("StateDirectory", "state"))
os.makedirs(state)
os.chown(state, 65534, 65534)
os.chmod(state, int(last("StateDirectoryMode", "0755"), 8))

# -- the user, umask, no new privileges ------------------------------------------------------
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
os.umask(int(last("UMask", "0022"), 8))
PR_SET_NO_NEW_PRIVS = 38
if last("NoNewPrivileges") == "yes":
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")

# -- seccomp, one filter per setting as systemd loads them -----------------------------------
seccomp = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
seccomp.seccomp_init.restype = ctypes.c_void_p
seccomp.seccomp_init.argtypes = [ctypes.c_uint32]
seccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
class Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]
seccomp.seccomp_rule_add_array.argtypes = [
    ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(Cmp)]
seccomp.seccomp_load.argtypes = [ctypes.c_void_p]
ALLOW = 0x7FFF0000
def ERRNO(code):
    return 0x00050000 | (code & 0xFFFF)
CMP_EQ, CMP_MASKED_EQ = 4, 7

def nr(name):
    number = seccomp.seccomp_syscall_resolve_name(name.encode())
    return None if number < 0 else number

def load(default, rules):
    ctx = seccomp.seccomp_init(default)
    assert ctx, "seccomp_init"
    for action, name, comparisons in rules:
        number = nr(name)
        if number is None:
            continue
        array = (Cmp * max(len(comparisons), 1))(*[Cmp(*c) for c in comparisons])
        result = seccomp.seccomp_rule_add_array(ctx, action, number, len(comparisons), array)
        if result != 0:
            raise OSError(-result, f"seccomp rule {name} {comparisons}")
    check(seccomp.seccomp_load(ctx), "seccomp_load")

def expand(entry):
    names = set()
    for word in entry.split():
        if word.startswith("@"):
            for member in groups[word]:
                names |= expand(member)
        else:
            names.add(word)
    return names

NAMESPACES = {"cgroup": 0x02000000, "ipc": 0x08000000, "net": 0x40000000, "mnt": 0x00020000,
              "pid": 0x20000000, "user": 0x10000000, "uts": 0x04000000}
restrict = settings.get("RestrictNamespaces") or []
if restrict:
    permitted = set()
    for entry in restrict:  # several assignments are merged by OR (systemd.exec(5))
        if entry in ("yes", "true"):
            continue
        if entry in ("no", "false"):
            permitted = set(NAMESPACES)
            continue
        if entry.startswith("~"):
            permitted |= set(NAMESPACES) - set(entry[1:].split())
        else:
            permitted |= set(entry.split())
    rules = [(ERRNO(errno.ENOSYS), "clone3", [])]  # its flags are out of a filter's reach
    for name, flag in NAMESPACES.items():
        if name in permitted:
            continue
        rules += [
            (ERRNO(errno.EPERM), "unshare", [(0, CMP_MASKED_EQ, flag, flag)]),
            (ERRNO(errno.EPERM), "clone", [(0, CMP_MASKED_EQ, flag, flag)]),
            (ERRNO(errno.EPERM), "setns", [(1, CMP_MASKED_EQ, flag, flag)]),
        ]
    load(ALLOW, rules)

if last("MemoryDenyWriteExecute") == "yes":
    PROT_WRITE, PROT_EXEC, SHM_EXEC = 2, 4, 0o100000
    load(ALLOW, [
        (ERRNO(errno.EPERM), "mmap", [(2, CMP_MASKED_EQ, PROT_WRITE | PROT_EXEC,
                                       PROT_WRITE | PROT_EXEC)]),
        (ERRNO(errno.EPERM), "mprotect", [(2, CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC)]),
        (ERRNO(errno.EPERM), "pkey_mprotect", [(2, CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC)]),
        (ERRNO(errno.EPERM), "shmat", [(2, CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC)]),
    ])

families = last("RestrictAddressFamilies")
if families:
    import socket
    keep = {int(getattr(socket, name)) for name in families.split()}
    load(ALLOW, [(ERRNO(errno.EAFNOSUPPORT), "socket", [(0, CMP_EQ, family, 0)])
                 for family in range(46) if family not in keep])

# Last: the allow list has no seccomp() for the filters after it (systemd loads them all
# before it execs the service).
filters = settings.get("SystemCallFilter") or []
if filters:
    allowed = None
    for entry in filters:
        deny = entry.startswith("~")
        names = expand(entry.lstrip("~"))
        if allowed is None:
            if deny:
                raise SystemExit("a deny list first is not what the unit has")
            allowed = set(names)
        elif deny:
            allowed -= names
        else:
            allowed |= names
    # What systemd always allows, for the exec and the exit of the service.
    allowed |= {"execve", "exit", "exit_group", "getrlimit", "rt_sigreturn", "sigreturn"}
    code = getattr(errno, last("SystemCallErrorNumber", "EPERM"))
    load(ERRNO(code), [(ALLOW, name, []) for name in sorted(allowed)])

# -- the test's program ----------------------------------------------------------------------
os.environ["FAXGW_STATE_DIRECTORY"] = state
exec(compile(doc["program"], "<under the unit>", "exec"), {"__name__": "__main__"})
"""
