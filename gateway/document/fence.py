"""What LibreOffice may not read: other people's files, hidden from each conversion.

A document can name a local file for LibreOffice to read while it converts (an HTML
`<img src="file:///var/lib/fax-gateway/inbound/...">`, an ODT section or OLE object linked to a
file), and what it reads ends up in the fax and in the report mailed back. So each conversion
runs in its own mount namespace (office.py: `unshare --mount`), and before LibreOffice starts,
`SCRIPT` mounts an empty tmpfs over every directory that holds other people's data and
/dev/null over every such file:

- data.dir (the spool, the store, received faxes, mails on their way), and the configuration
  file with its directory (secrets);
- every other path the configuration names (each field of type Path: users files, templates,
  the inbound archive, a Maildir, TLS keys, password files);
- /root, /home, and the temp directory, where other conversions' work directories are: this
  conversion's own is mounted back from a descriptor opened before the tmpfs hid it.

A directory that is or holds what LibreOffice needs to run (/, /usr, /etc, /proc, the
program's own directory...) is never hidden as a whole; a file the configuration names there
still is. Paths that do not exist are skipped. Other processes' /proc entries are no way
around this: a process in a user namespace may not open another namespace's /proc/<pid>/root.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from pydantic import BaseModel

from gateway.config import Config

# Hidden in every conversion, whatever the configuration says.
ALWAYS = (Path("/root"), Path("/home"))
# What LibreOffice needs to run: never hidden, nor any directory holding one of them.
NEEDED = tuple(
    Path(p) for p in ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib64", "/proc", "/dev", "/sys")
)

# Run by `sh -c` inside the namespace: $1 is the conversion's work directory, $2 the largest
# file the command may write (RLIMIT_FSIZE, in the 512-byte blocks of POSIX `ulimit -f`), then
# "dir:PATH" and "file:PATH" words, "--", and the command to exec. Any failed mount ends it
# (set -e), so LibreOffice never runs with something left in view.
SCRIPT = """set -eu
root=$1; blocks=$2; shift 2
exec 3<"$root"
while [ "$1" != "--" ]; do
  case $1 in
    dir:*) mount -t tmpfs -o size=64k,nosuid,nodev,noexec faxgw-hidden "${1#dir:}" ;;
    file:*) mount --bind /dev/null "${1#file:}" ;;
  esac
  shift
done
shift
if [ ! -d "$root/profile" ]; then
  mkdir -p "$root"
  mount --no-canonicalize --bind /proc/self/fd/3 "$root"
fi
exec 3<&-
ulimit -f "$blocks"
exec "$@"
"""


def hidden_paths(config: Config, config_path: Path | None = None) -> tuple[Path, ...]:
    """The paths of this gateway a conversion must not see (see the module docstring)."""
    paths = [config.data.dir, *_paths_in(config)]
    if config_path is not None:
        paths += [config_path, config_path.parent]
    return tuple(dict.fromkeys(paths))


def _paths_in(value: object) -> Iterator[Path]:
    if isinstance(value, Path):
        yield value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _paths_in(getattr(value, name))
    elif isinstance(value, dict):
        for item in value.values():
            yield from _paths_in(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _paths_in(item)


def mount_words(hidden: Iterable[Path], program: str) -> list[str]:
    """SCRIPT's "dir:" and "file:" words for `hidden` plus ALWAYS and the temp directory, as
    they are now on disk: resolved, existing, nothing LibreOffice (`program`) needs, and
    nothing inside a directory hidden already."""
    needed = [*NEEDED, Path(os.path.realpath(program))]
    dirs: list[Path] = []
    files: list[Path] = []
    for path in (*ALWAYS, Path(tempfile.gettempdir()), *hidden):
        real = Path(os.path.realpath(path))
        if real.is_dir():
            if not any(real == n or real in n.parents for n in needed):
                dirs.append(real)
        elif real.exists():
            files.append(real)
    kept = sorted(set(dirs), key=lambda p: len(p.parts))
    outer: list[Path] = []
    for path in kept:
        if not any(o in path.parents for o in outer):
            outer.append(path)
    inner = [f for f in dict.fromkeys(files) if not any(o in f.parents for o in outer)]
    return [f"dir:{p}" for p in outer] + [f"file:{p}" for p in inner]
