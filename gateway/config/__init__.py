"""Typed, frozen configuration: one TOML file, with secrets that may come from the environment.

Every section is a frozen pydantic model that forbids unknown keys, so a typo is an error at
start-up rather than a silently ignored setting. `load_config` turns every problem into one line
that names the key (`smtp.listen: ...`) and raises ConfigError with all of them.

Callers import every name from here; each lives in the module of its section:

    values.py     the kinds of value a key holds (Address, FaxNumber, ...) and Section
    smtp.py       [smtp]
    http.py       [http], [ui]
    carrier.py    [voxtelesys], [webhooks]
    fax.py        [fax], [limits], [senders]
    documents.py  [documents], [cover]
    files.py      [data], [storage]
    mail.py       [relay], [notify], [templates]
    privacy.py    the privacy mode (attach, the PDF password) of notify, inbound and senders
    inbound.py    [inbound] and its routes
    queues.py     [store], [queue]
    root.py       Config, the whole file, and the checks that span sections
    loading.py    resolve_path, load_config, config_from_dict, ConfigError
"""

from gateway.config.carrier import VoxtelesysConfig, WebhooksConfig
from gateway.config.documents import CoverConfig, DocumentsConfig
from gateway.config.fax import DEFAULT_BLOCKED_PREFIXES, FaxConfig, LimitsConfig, SenderConfig
from gateway.config.files import DataConfig, StorageConfig
from gateway.config.http import HttpConfig, UiConfig
from gateway.config.inbound import InboundConfig, InboundRoute, RouteConfig
from gateway.config.loading import (
    CONFIG_ENV,
    DEFAULT_PATH,
    SECRET_ENV,
    ConfigError,
    config_from_dict,
    load_config,
    resolve_path,
)
from gateway.config.mail import NotifyConfig, RelayConfig, TemplatesConfig
from gateway.config.privacy import (
    ATTACH_ENCRYPTED,
    ATTACH_NONE,
    ATTACH_PDF,
    MIN_PDF_PASSWORD_CHARS,
    AttachMode,
    PrivacySection,
)
from gateway.config.queues import QueueConfig, StoreConfig
from gateway.config.root import Config
from gateway.config.smtp import SmtpConfig
from gateway.config.values import (
    Address,
    EmailAddress,
    FaxNumber,
    FromAddress,
    ListenAddress,
    Network,
    Section,
)

__all__ = [
    "ATTACH_ENCRYPTED",
    "ATTACH_NONE",
    "ATTACH_PDF",
    "CONFIG_ENV",
    "DEFAULT_BLOCKED_PREFIXES",
    "DEFAULT_PATH",
    "MIN_PDF_PASSWORD_CHARS",
    "SECRET_ENV",
    "Address",
    "AttachMode",
    "Config",
    "ConfigError",
    "CoverConfig",
    "DataConfig",
    "DocumentsConfig",
    "EmailAddress",
    "FaxConfig",
    "FaxNumber",
    "FromAddress",
    "HttpConfig",
    "InboundConfig",
    "InboundRoute",
    "LimitsConfig",
    "ListenAddress",
    "Network",
    "NotifyConfig",
    "PrivacySection",
    "QueueConfig",
    "RelayConfig",
    "RouteConfig",
    "Section",
    "SenderConfig",
    "SmtpConfig",
    "StorageConfig",
    "StoreConfig",
    "TemplatesConfig",
    "UiConfig",
    "VoxtelesysConfig",
    "WebhooksConfig",
    "config_from_dict",
    "load_config",
    "resolve_path",
]
