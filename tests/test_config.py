"""Configuration: loading, defaults, environment secrets and every validation message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, config_from_dict, load_config, resolve_path
from tests.conftest import ROOT, merge


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, env={})
    return info.value.problems


def test_example_config_is_valid() -> None:
    """The shipped example documents a configuration that actually loads."""
    config = load_config(ROOT / "config" / "gateway.example.toml", env={})
    assert config.smtp.domain == "fax.local"
    assert config.senders["alice@example.com"].from_number == "+12015550103"
    assert config.inbound.routes["+12015550102"].recipients == (
        "billing@example.com",
        "boss@example.com",
    )


def test_defaults_fill_optional_sections(config_data: dict[str, Any]) -> None:
    """Only the four required keys are needed; the rest have safe defaults."""
    config = config_from_dict(config_data, env={})
    assert config.storage.backend == "local"
    assert config.voxtelesys.base_url == "https://faxapi.voxtelesys.net/api/v1"
    assert config.allowed_countries == ("US",)
    assert "+1900" in config.fax.blocked_prefixes


def test_config_is_frozen(config_data: dict[str, Any]) -> None:
    """Configuration objects cannot be changed after loading."""
    config = config_from_dict(config_data, env={})
    with pytest.raises(Exception, match="frozen"):
        config.smtp.domain = "other"  # type: ignore[misc]


def test_unknown_key_is_named(config_data: dict[str, Any]) -> None:
    """A misspelt key is reported with its full path, not ignored."""
    assert problems_of(merge(config_data, {"smtp": {"lisen": "x"}})) == [
        "smtp.lisen: unknown key (misspelt, or in the wrong section?)"
    ]


def test_unknown_section_is_named(config_data: dict[str, Any]) -> None:
    """A whole unknown section is reported too."""
    assert problems_of(merge(config_data, {"smpt": {}})) == [
        "smpt: unknown key (misspelt, or in the wrong section?)"
    ]


def test_wrong_type_is_named(config_data: dict[str, Any]) -> None:
    """A string where a number belongs names the key, the expectation and the value."""
    [problem] = problems_of(merge(config_data, {"smtp": {"max_message_bytes": "ten"}}))
    assert problem.startswith("smtp.max_message_bytes: wrong type: input should be a valid integer")
    assert "'ten'" in problem


def test_bad_from_number() -> None:
    """A from_number that is no number says so."""
    data = merge(
        {"http": {"public_url": "http://x", "webhook_token": "t" * 20}},
        {"voxtelesys": {"api_key": "k", "from_number": "12"}, "relay": {"from_address": "a@b.cd"}},
    )
    assert problems_of(data) == ["voxtelesys.from_number: '12' is not a fax number: too short"]


@pytest.mark.parametrize("address", ["ops@example.com)", "<ops@example.com>", "ops@exa[mple.com"])
def test_unusable_mail_addresses_are_refused_at_load(
    config_data: dict[str, Any], address: str
) -> None:
    """An address no mail could be sent to fails the load, not every report at run time."""
    overrides: list[dict[str, Any]] = [
        {"notify": {"cc": [address]}},
        {"inbound": {"default_recipients": [address]}},
    ]
    if address != "<ops@example.com>":  # a From address may be written in angle brackets
        overrides.append({"relay": {"from_address": address}})
    for override in overrides:
        [problem] = problems_of(merge(config_data, override))
        assert f"{address!r} is not an email address" in problem


@pytest.mark.parametrize(
    ("written", "header", "envelope"),
    [
        ("Fax Gateway <fax@example.com>", "Fax Gateway <fax@example.com>", "fax@example.com"),
        (
            "  Fax   Gateway   <fax@example.com> ",
            "Fax Gateway <fax@example.com>",
            "fax@example.com",
        ),
        (
            '"Acme, Fax Desk" <fax@example.com>',
            '"Acme, Fax Desk" <fax@example.com>',
            "fax@example.com",
        ),
        ("J. Smith <fax@example.com>", '"J. Smith" <fax@example.com>', "fax@example.com"),
        (
            "Faxdienst Müller <fax@example.com>",
            "Faxdienst Müller <fax@example.com>",
            "fax@example.com",
        ),
        ("<fax@example.com>", "fax@example.com", "fax@example.com"),
        ("fax@example.com", "fax@example.com", "fax@example.com"),
    ],
)
def test_from_address_may_carry_a_display_name(
    config_data: dict[str, Any], written: str, header: str, envelope: str
) -> None:
    """relay.from_address takes `Name <addr>`; the envelope sender is the bare address."""
    config = config_from_dict(merge(config_data, {"relay": {"from_address": written}}), env={})
    assert config.relay.from_address == header
    assert config.relay.envelope_sender == envelope


@pytest.mark.parametrize(
    "written",
    [
        "Fax\r\nBcc: victim@example.org <fax@example.com>",
        "Fax <fax@example.com>\r\nBcc: victim@example.org",
        "Fax <fax@example.com>, <other@example.com>",
        "Fax <fax@example.com> <other@example.com>",
        "fax@example.com, other@example.com",
        "Fax, Desk <fax@example.com>",
        "Fax <fax@example.com> trailing",
        '"Fax <fax@example.com>',
        'Fax "Desk" <fax@example.com>',
        "Fax <>",
        "Fax <not an address>",
        "Fax\u202e <fax@example.com>",
        "x" * 300 + " <fax@example.com>",
    ],
)
def test_from_address_is_one_mailbox_without_line_breaks(
    config_data: dict[str, Any], written: str
) -> None:
    """A second address, a line break or a stray quote in relay.from_address fails the load."""
    [problem] = problems_of(merge(config_data, {"relay": {"from_address": written}}))
    assert problem.startswith("relay.from_address: ")


@pytest.mark.parametrize(
    "override",
    [
        {"relay": {"username": "fax", "password": 87654321}},
        {"voxtelesys": {"api_key": ["sk-live-87654321"]}},
        {"http": {"webhook_token": 87654321876543218765}},
        {"http": {"metrics_token": 87654321}},
    ],
)
def test_a_secret_of_the_wrong_type_is_not_shown(
    config_data: dict[str, Any], override: dict[str, Any]
) -> None:
    """The problem names the key and the type, never the value of a secret."""
    [problem] = problems_of(merge(config_data, override))
    assert "wrong type" in problem and "87654321" not in problem


@pytest.mark.parametrize("network", ["0.0.0.0/0", "0.0.0.0/1", "::/0", "2000::/3"])
def test_allowed_networks_cannot_open_the_gateway_to_the_internet(
    config_data: dict[str, Any], network: str
) -> None:
    """A network spanning the public internet is refused: it would make an open fax relay."""
    [problem] = problems_of(merge(config_data, {"smtp": {"allowed_networks": [network]}}))
    assert problem.startswith("smtp.allowed_networks: ") and "open relay" in problem


def test_private_and_narrow_networks_are_allowed(config_data: dict[str, Any]) -> None:
    """Private ranges of any size and narrow public ones stay possible."""
    networks = ["10.0.0.0/8", "172.16.0.0/12", "fc00::/7", "198.51.100.0/24", "2001:db8::/32"]
    data = merge(config_data, {"smtp": {"allowed_networks": networks}})
    assert len(config_from_dict(data, env={}).smtp.allowed_networks) == 5


def test_public_url_must_be_absolute(config_data: dict[str, Any]) -> None:
    """A relative public_url would give the carrier unusable links."""
    assert problems_of(merge(config_data, {"http": {"public_url": "fax.example.com/x"}})) == [
        "http.public_url: 'fax.example.com/x' is not an absolute http(s) URL"
    ]


def test_route_key_must_be_a_number(config_data: dict[str, Any]) -> None:
    """An inbound route for something that is not a number is refused, naming the key."""
    data = merge(config_data, {"inbound": {"routes": {"sales": ["a@example.com"]}}})
    assert problems_of(data) == [
        "inbound.routes.sales: 'sales' is not a fax number: only digits, '+' and separators allowed"
    ]


def test_route_keys_are_normalised(config_data: dict[str, Any]) -> None:
    """Route numbers written any way people write them become E.164."""
    data = merge(config_data, {"inbound": {"routes": {"+1 (201) 555-0199": ["a@example.com"]}}})
    routes = config_from_dict(data, env={}).inbound.routes
    assert {number: route.recipients for number, route in routes.items()} == {
        "+12015550199": ("a@example.com",)
    }


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("localhost", "'localhost' is not an address: expected 'host:port'"),
        (
            "127.0.0.1:99999",
            "'127.0.0.1:99999' is not an address: port must be a number from 0 to 65535",
        ),
        ("[::1:25", "'[::1:25' is not an address: expected '[ipv6]:port'"),
        ("bad host!:25", "'bad host!:25' is not an address: bad host 'bad host!'"),
    ],
)
def test_listen_address_must_parse(config_data: dict[str, Any], listen: str, message: str) -> None:
    """Listen addresses that do not parse say why."""
    assert problems_of(merge(config_data, {"smtp": {"listen": listen}})) == [
        f"smtp.listen: {message}"
    ]


def test_ipv6_listen_address(config_data: dict[str, Any]) -> None:
    """'[::1]:2525' is an IPv6 address and port."""
    config = config_from_dict(merge(config_data, {"smtp": {"listen": "[::1]:2525"}}), env={})
    assert (config.smtp.listen.host, config.smtp.listen.port) == ("::1", 2525)


def test_missing_required_key_in_a_section(config_data: dict[str, Any]) -> None:
    """A required key missing inside a present section is named as a key."""
    del config_data["voxtelesys"]["from_number"]
    assert problems_of(config_data) == ["voxtelesys.from_number: required key is missing"]


def test_missing_required_keys_are_all_listed() -> None:
    """An empty file lists every required key at once."""
    assert problems_of({}) == [
        "http: required section is missing",
        "voxtelesys: required section is missing",
        "relay: required section is missing",
    ]


def test_several_problems_reported_together(config_data: dict[str, Any]) -> None:
    """All problems come out in one go, so a user fixes them in one edit."""
    data = merge(
        config_data,
        {
            "smtp": {"default_country": "XX"},
            "storage": {"backend": "s3"},
            "fax": {"paper": "legal"},
        },
    )
    problems = problems_of(data)
    assert "smtp.default_country: 'XX' is not an ISO country code such as 'US' or 'DE'" in problems
    assert "storage: backend 's3' needs a bucket" in problems
    assert any(p.startswith("fax.paper: input should be 'letter' or 'a4'") for p in problems)


def test_short_webhook_token_refused(config_data: dict[str, Any]) -> None:
    """A guessable webhook token is refused."""
    assert problems_of(merge(config_data, {"http": {"webhook_token": "short"}})) == [
        "http.webhook_token: must be at least 16 characters (it is the webhook's only password)"
    ]


def test_document_worker_budgets_are_validated(config_data: dict[str, Any]) -> None:
    """[documents] budgets: defaults 768 MB and 120 s; a budget Python cannot even start in,
    or no time at all, is refused with the key named."""
    config = config_from_dict(config_data, env={})
    assert (config.documents.worker_memory_mb, config.documents.worker_timeout_seconds) == (
        768,
        120.0,
    )
    problems = problems_of(
        merge(config_data, {"documents": {"worker_memory_mb": 64, "worker_timeout_seconds": 0}})
    )
    assert any(p.startswith("documents.worker_memory_mb: ") for p in problems), problems
    assert any(p.startswith("documents.worker_timeout_seconds: ") for p in problems), problems
    assert problems_of(merge(config_data, {"documents": {"workers": 3}}))
    problems = problems_of(
        merge(config_data, {"http": {"body_timeout_seconds": 0}, "inbound": {"max_pages": 0}})
    )
    assert any(p.startswith("http.body_timeout_seconds: ") for p in problems), problems
    assert any(p.startswith("inbound.max_pages: ") for p in problems), problems


def test_environment_secrets_win(config_data: dict[str, Any]) -> None:
    """Secrets from the environment override the file."""
    env = {
        "VOXTELESYS_API_KEY": "key-from-env",
        "FAXGW_WEBHOOK_TOKEN": "token-from-env-0123456789",
        "FAXGW_RELAY_PASSWORD": "pw-from-env",
    }
    data = merge(config_data, {"relay": {"username": "u", "password": "pw-in-file"}})
    config = config_from_dict(data, env=env)
    assert config.voxtelesys.api_key.get_secret_value() == "key-from-env"
    assert config.http.webhook_token.get_secret_value() == "token-from-env-0123456789"
    assert config.relay.password is not None
    assert config.relay.password.get_secret_value() == "pw-from-env"


def test_secrets_do_not_print(config_data: dict[str, Any]) -> None:
    """repr() of the configuration never shows a secret."""
    config = config_from_dict(config_data, env={})
    assert "test-api-key-abcdef" not in repr(config)
    assert "test-webhook-token" not in repr(config)


def test_config_path_resolution(tmp_path: Path) -> None:
    """--config wins over $FAXGW_CONFIG, which wins over /etc."""
    assert resolve_path("a.toml", {"FAXGW_CONFIG": "b.toml"}) == Path("a.toml")
    assert resolve_path(None, {"FAXGW_CONFIG": "b.toml"}) == Path("b.toml")
    assert resolve_path(None, {}) == Path("/etc/fax-gateway/gateway.toml")


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    """A missing file and broken TOML are problems, not tracebacks."""
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[smtp\nlisten=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


# -- privacy modes (attach) ----------------------------------------------------------------------

PDF_PASSWORD = "Seven-Horses-Jump"
ROUTE = "+12015550101"


def test_routes_take_the_list_form_and_the_table_form_side_by_side(
    config_data: dict[str, Any],
) -> None:
    """A route is a list of addresses or a table with recipients, attach and its password,
    whose value comes from the environment variable it names and is a registered secret."""
    routes = {
        ROUTE: ["sales@example.com"],
        "+12015550102": {
            "recipients": ["records@example.com"],
            "attach": "encrypted-pdf",
            "password_env": "FAXGW_PW_RECORDS",
        },
    }
    data = merge(config_data, {"inbound": {"routes": routes}})
    config = config_from_dict(data, env={"FAXGW_PW_RECORDS": PDF_PASSWORD})
    plain, locked = config.inbound.route(ROUTE), config.inbound.route("12015550102")
    assert plain is not None and locked is not None
    assert (plain.recipients, plain.attach, plain.password) == (("sales@example.com",), None, None)
    assert locked.recipients == ("records@example.com",)
    assert locked.password is not None and locked.password.get_secret_value() == PDF_PASSWORD
    assert PDF_PASSWORD in config.secrets()
    assert PDF_PASSWORD not in repr(config) and PDF_PASSWORD not in str(locked)


def test_a_password_file_is_read_without_its_newline(
    config_data: dict[str, Any], tmp_path: Path
) -> None:
    """password_file holds the password; the newline an editor adds is not part of it."""
    path = tmp_path / "reports.pw"
    path.write_text(PDF_PASSWORD + "\n")
    data = merge(
        config_data,
        {"notify": {"attach": "encrypted-pdf", "password_file": str(path)}},
    )
    password = config_from_dict(data, env={}).notify.password
    assert password is not None and password.get_secret_value() == PDF_PASSWORD


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        (
            {"notify": {"attach": "encrypted-pdf"}},
            "notify: attach = 'encrypted-pdf' needs its password from password_env or"
            " password_file (one of them; never the password itself)",
        ),
        (
            {"notify": {"password": PDF_PASSWORD}},
            "notify.password: unknown key (misspelt, or in the wrong section?)",
        ),
        (
            {"notify": {"password_env": "FAXGW_PW"}},
            "notify: password_env is only used with attach = 'encrypted-pdf'",
        ),
        (
            {"notify": {"attach": "encrypted-pdf", "password_env": "FAXGW_UNSET"}},
            "notify: $FAXGW_UNSET is empty or not set: it must hold the PDF password",
        ),
        (
            {"notify": {"attach": "encrypted-pdf", "password_env": "FAXGW_SHORT"}},
            "notify: the password in $FAXGW_SHORT is shorter than 8",
        ),
        (
            {"notify": {"attach": "encrypted-pdf", "password_file": "/nonexistent/pw"}},
            "notify: password_file '/nonexistent/pw' cannot be read: No such file or directory",
        ),
        (
            {"notify": {"attach": "zip"}},
            "notify.attach: input should be 'pdf', 'encrypted-pdf' or 'none'",
        ),
        (
            {"notify": {"timezone": "Mars/Olympus_Mons"}},
            "notify.timezone: 'Mars/Olympus_Mons' is not a time zone such as 'UTC' or"
            " 'Europe/Berlin'",
        ),
        (
            {
                "inbound": {
                    "attach": "encrypted-pdf",
                    "password_env": "FAXGW_PW",
                    "attach_format": "both",
                }
            },
            "inbound: attach_format 'both' is not offered with attach = 'encrypted-pdf' (a TIFF"
            " cannot be encrypted): use attach_format = 'pdf'",
        ),
        (
            {
                "inbound": {
                    "attach_format": "tiff",
                    "routes": {
                        ROUTE: {
                            "recipients": ["records@example.com"],
                            "attach": "encrypted-pdf",
                            "password_env": "FAXGW_PW",
                        }
                    },
                }
            },
            f"inbound: routes.{ROUTE} has attach = 'encrypted-pdf', which attach_format 'tiff'"
            " does not allow (a TIFF cannot be encrypted): use attach_format = 'pdf'",
        ),
        (
            {
                "senders": {
                    "alice@example.com": {
                        "from_number": "+12015550103",
                        "attach": "encrypted-pdf",
                        "password_env": "FAXGW PW",
                    }
                }
            },
            "senders.\"alice@example.com\": password_env 'FAXGW PW' is not an environment"
            " variable name",
        ),
    ],
)
def test_privacy_settings_are_checked_at_load(
    config_data: dict[str, Any], override: dict[str, Any], problem: str
) -> None:
    """Every way to get attach or its password wrong is one clear line; no line repeats a
    password, and TIFF attachments are refused beside encryption."""
    env = {"FAXGW_PW": PDF_PASSWORD, "FAXGW_SHORT": "abc1234"}
    with pytest.raises(ConfigError) as info:
        config_from_dict(merge(config_data, override), env=env)
    assert info.value.problems == [problem]
    assert PDF_PASSWORD not in str(info.value) and "abc1234" not in str(info.value)
