"""`fax-gateway check-config`: validate the configuration and say what is wrong.

Beyond what loading checks (types, keys, numbers), it refuses what an administrator copied
from config/gateway.example.toml and forgot to change: that file is public, so its webhook
token protects nothing, and its example.com addresses reach no one.
"""

from __future__ import annotations

import argparse
import sys
from urllib.parse import urlsplit

from gateway.cli import add_config_argument, config_from_args
from gateway.config import Config
from gateway.document.cover import CoverTemplateError, check_template
from gateway.document.office import OfficeConverter
from gateway.store.backend import cluster_problems

EXIT_EXAMPLE_VALUES = 1
EXIT_PROBLEMS = 2

# The placeholders of config/gateway.example.toml (tests/test_cli.py keeps the two in step),
# with what to do instead.
EXAMPLE_SECRETS: dict[tuple[str, str], tuple[str, str]] = {
    ("http", "webhook_token"): (
        "change-me-to-a-long-random-string",
        ", which anyone can read: set FAXGW_WEBHOOK_TOKEN to a long random string",
    ),
    ("http", "metrics_token"): (
        "another-long-random-string",
        ", which anyone can read: choose a long random string",
    ),
    ("voxtelesys", "api_key"): (
        "your-api-key",
        ": set VOXTELESYS_API_KEY to the key from the Voxtelesys portal",
    ),
    ("relay", "password"): ("secret", ": set FAXGW_RELAY_PASSWORD to the relay's password"),
}
# RFC 2606: names reserved for documentation, which no carrier can reach.
EXAMPLE_DOMAINS = ("example.com", "example.net", "example.org")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check-config",
        help="validate the configuration file",
        description=(
            "Print 'configuration OK' and exit 0; print every problem (including a converter "
            "documents.convert_office needs but this machine lacks) and exit 2; or, when the "
            "file is valid but still has the example's secrets or example.com as its public "
            "URL, name them and exit 1. Risky but valid combinations are printed as warnings "
            "and do not change the exit status. Secrets are read from the environment as the "
            "service reads them: run it with the service's environment file."
        ),
    )
    add_config_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    # Warnings do not fail the check (a lab may mean it); they are printed whatever the verdict.
    for line in warnings(config):
        print(f"warning: {line}", file=sys.stderr)
    missing = cluster_problems(config) + missing_programs(config)
    if missing:
        for line in missing:
            print(line, file=sys.stderr)
        return EXIT_PROBLEMS
    leftovers = example_values(config)
    if leftovers:
        print("configuration valid, but values from the example are left:", file=sys.stderr)
        for line in leftovers:
            print(f"  {line}", file=sys.stderr)
        return EXIT_EXAMPLE_VALUES
    print("configuration OK")
    return 0


def warnings(config: Config) -> list[str]:
    """Valid combinations that are risky in production, one line each."""
    found = []
    if config.fax.number_check == "possible" and "*" in config.allowed_countries:
        found.append(
            'fax.number_check = "possible" with fax.allowed_countries = ["*"]: any number of '
            "the right length in any country is dialled, assigned or not; only the premium-rate "
            'prefixes and fax.blocked_prefixes stand between a sender and toll fraud. Use "strict" '
            "or name the countries"
        )
    if config.inbound.allow_private_media:
        found.append(
            "inbound.allow_private_media = true: inbound media links are fetched from any "
            "address, loopback, private networks and cloud metadata (169.254.169.254) included, "
            "and whatever answers is mailed to the inbound recipients; a forged webhook or a "
            "redirect can mail them the gateway's neighbours' pages. Labs only"
        )
    if config.smtp.subject_address is not None and not config.smtp.allowed_senders:
        found.append(
            "smtp.subject_address without smtp.allowed_senders: a refused copier mail is not "
            "explained by mail (its sender is unproven, and mailing it could be backscatter); "
            "list the copiers' sender addresses in allowed_senders"
        )
    found.extend(_cover_template_problems(config))
    return found


def _cover_template_problems(config: Config) -> list[str]:
    """A [senders] cover_template that cannot be rendered would refuse each of its faxes 451."""
    found = []
    for sender, settings in config.senders.items():
        if settings.cover_template is None:
            continue
        try:
            check_template(settings.cover_template, config.templates.dir)
        except CoverTemplateError as exc:
            found.append(f'senders."{sender}".cover_template: {exc}')
    return found


def missing_programs(config: Config) -> list[str]:
    """Programs the configuration needs that this machine lacks, one line each."""
    if not config.documents.convert_office:
        return []
    reason = OfficeConverter.for_gateway(config).missing()
    if reason is None:
        return []
    return [
        f"documents.convert_office is on, but {reason}: office attachments would be refused"
        " (install libreoffice-writer-nogui, libreoffice-calc-nogui and"
        " libreoffice-impress-nogui, or set documents.libreoffice)"
    ]


def example_values(config: Config) -> list[str]:
    """One line per setting that still has the example file's value, naming the key."""
    found = []
    for (section, key), (placeholder, advice) in EXAMPLE_SECRETS.items():
        secret = getattr(getattr(config, section), key)
        if secret is not None and secret.get_secret_value() == placeholder:
            found.append(f"{section}.{key}: still the example's value{advice}")
    host = (urlsplit(str(config.http.public_url)).hostname or "").lower()
    if any(host == domain or host.endswith(f".{domain}") for domain in EXAMPLE_DOMAINS):
        found.append(
            f"http.public_url: {host} is an example name the carrier cannot reach; "
            "use the HTTPS address of your proxy"
        )
    return found
