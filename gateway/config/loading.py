"""Loading the file: where it is, the secrets the environment may supply, and every problem
as one line naming its key (`smtp.listen: ...`), raised together as ConfigError.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.config.root import Config

DEFAULT_PATH = Path("/etc/fax-gateway/gateway.toml")
CONFIG_ENV = "FAXGW_CONFIG"

# Secrets that may come from the environment; they win over the file.
SECRET_ENV: dict[str, tuple[str, str]] = {
    "VOXTELESYS_API_KEY": ("voxtelesys", "api_key"),
    "FAXGW_WEBHOOK_TOKEN": ("http", "webhook_token"),
    "FAXGW_RELAY_PASSWORD": ("relay", "password"),
    "FAXGW_STORE_DSN": ("store", "dsn"),
}


# Keys whose values are secrets (SecretStr): never shown in a problem.
_SECRET_KEYS = frozenset({"api_key", "webhook_token", "metrics_token", "password", "dsn"})


class ConfigError(Exception):
    """The configuration cannot be used; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def resolve_path(cli_path: str | Path | None, env: Mapping[str, str] | None = None) -> Path:
    """--config, else $FAXGW_CONFIG, else /etc/fax-gateway/gateway.toml."""
    env = os.environ if env is None else env
    if cli_path:
        return Path(cli_path)
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    return DEFAULT_PATH


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except PermissionError:
        raise ConfigError([f"{path}: permission denied"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    return config_from_dict(data, env)


def config_from_dict(data: dict[str, Any], env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for variable, (section, key) in SECRET_ENV.items():
        if env.get(variable):
            section_data = data.setdefault(section, {})
            if isinstance(section_data, dict):
                section_data[key] = env[variable]
    try:
        # The environment goes along for the PDF passwords (password_env).
        return Config.model_validate(data, context={"env": env})
    except ValidationError as exc:
        raise ConfigError([_describe(error) for error in exc.errors()]) from None


def _describe(error: Any) -> str:
    loc = [str(part) for part in error["loc"]]
    # Drop pydantic's internal location parts (validator names, union branches).
    loc = [p for p in loc if not p.startswith(("function-", "json-or-python")) and "[" not in p]
    key = ".".join(_quote(p) for p in loc) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{key}: unknown key (misspelt, or in the wrong section?)"
    if kind == "missing":
        what = "section" if len(loc) == 1 and loc[0] in Config.model_fields else "key"
        return f"{key}: required {what} is missing"
    message = str(error["msg"])
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if message[:1].isupper() and not message[1:2].isupper():
        message = message[0].lower() + message[1:]
    if kind.endswith("_type") or kind.endswith("_parsing"):
        # Problems are printed and logged: a secret's value is never repeated, whatever it is.
        got = "" if loc and loc[-1] in _SECRET_KEYS else f" (got {error.get('input')!r})"
        message = f"wrong type: {message}{got}"
    return f"{key}: {message}"


def _quote(part: str) -> str:
    return part if part.replace("_", "").isalnum() else f'"{part}"'
