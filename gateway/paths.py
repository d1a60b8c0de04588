"""Where the files that ship beside the package are: the built-in Jinja2 templates."""

from __future__ import annotations

import sys
from pathlib import Path

import gateway

# A checkout or editable install has templates/ beside the package; a wheel installs them as
# data files under <prefix>/share/fax-gateway/templates (pyproject.toml, data-files).
_CANDIDATES = (
    Path(gateway.__file__).resolve().parent.parent / "templates",
    Path(sys.prefix) / "share" / "fax-gateway" / "templates",
)


def builtin_templates() -> Path:
    for candidate in _CANDIDATES:
        if (candidate / "cover.txt.j2").is_file():
            return candidate
    return _CANDIDATES[0]


BUILTIN_TEMPLATES = builtin_templates()
