"""Config, the whole file: every section under its name, and the checks that span sections."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from gateway.config.carrier import VoxtelesysConfig, WebhooksConfig
from gateway.config.documents import CoverConfig, DocumentsConfig
from gateway.config.fax import FaxConfig, LimitsConfig, SenderConfig
from gateway.config.files import DataConfig, StorageConfig
from gateway.config.http import HttpConfig, UiConfig
from gateway.config.inbound import InboundConfig
from gateway.config.mail import NotifyConfig, RelayConfig, TemplatesConfig
from gateway.config.queues import QueueConfig, StoreConfig
from gateway.config.smtp import SmtpConfig
from gateway.config.values import Section, checked_email


class Config(Section):
    smtp: SmtpConfig = SmtpConfig()
    http: HttpConfig
    voxtelesys: VoxtelesysConfig
    storage: StorageConfig = StorageConfig()
    relay: RelayConfig
    inbound: InboundConfig = InboundConfig()
    data: DataConfig = DataConfig()
    fax: FaxConfig = FaxConfig()
    limits: LimitsConfig = LimitsConfig()
    cover: CoverConfig = CoverConfig()
    documents: DocumentsConfig = DocumentsConfig()
    notify: NotifyConfig = NotifyConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    templates: TemplatesConfig = TemplatesConfig()
    queue: QueueConfig = QueueConfig()
    ui: UiConfig = UiConfig()
    store: StoreConfig = StoreConfig()
    senders: dict[str, SenderConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _ui_users(self) -> Config:
        if self.ui.enabled and self.ui_users_file is None:
            raise ValueError("ui.enabled needs ui.users_file or smtp.users_file (who may log in)")
        return self

    @property
    def ui_users_file(self) -> Path | None:
        """Who may log in to /ui/: ui.users_file, else smtp.users_file."""
        return self.ui.users_file or self.smtp.users_file

    @field_validator("senders")
    @classmethod
    def _lower_senders(cls, value: dict[str, SenderConfig]) -> dict[str, SenderConfig]:
        for address in value:
            checked_email(address)
        return {address.lower(): sender for address, sender in value.items()}

    @model_validator(mode="after")
    def _archive_bucket(self) -> Config:
        if self.inbound.archive_s3_prefix is not None and self.storage.backend != "s3":
            raise ValueError(
                "inbound.archive_s3_prefix needs storage.backend = 's3' (the archive is kept in"
                " storage.bucket)"
            )
        return self

    @property
    def allowed_countries(self) -> tuple[str, ...]:
        return self.fax.allowed_countries or (self.smtp.default_country,)

    def secrets(self) -> list[str]:
        """Every secret value in this configuration, for the log redactor."""
        values = [self.voxtelesys.api_key, self.http.webhook_token]
        values += [s for s in (self.relay.password, self.http.metrics_token) if s is not None]
        privacy = [self.notify, self.inbound, *self.inbound.routes.values(), *self.senders.values()]
        values += [p.password for p in privacy if p.password is not None]
        if self.store.dsn is not None:
            values.append(self.store.dsn)
        found = [s.get_secret_value() for s in values if s.get_secret_value()]
        password = self.store.dsn_password
        return [*found, password] if password else found
