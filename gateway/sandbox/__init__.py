"""The sandbox carrier: a local stand-in for the Voxtelesys Fax API.

It follows the documented API (routes, auth, errors, pagination, webhooks), fetches and checks
documents like the carrier, and adds a control API to script outcomes, inject faults, create
inbound faxes and see everything it did. People use it to try the gateway without an account
(`fax-gateway sandbox`); the gateway's tests use it as their carrier.

- settings.py: what can be configured, and the scripted numbers.
- app.py: the application, its middleware, and `SandboxServer`.
- api.py / control.py: the documented API, and the control API.
- lifecycle.py / documents.py / webhooks.py: a fax's life, document checks, webhooks.
- state.py: what it keeps in memory.
"""

from gateway.sandbox.app import SandboxServer, create_sandbox_app
from gateway.sandbox.settings import (
    API_PREFIX,
    CONTROL_PREFIX,
    DEFAULT_API_KEY,
    DEFAULT_LISTEN,
    DEFAULT_OUTCOMES,
    SandboxSettings,
)

__all__ = [
    "API_PREFIX",
    "CONTROL_PREFIX",
    "DEFAULT_API_KEY",
    "DEFAULT_LISTEN",
    "DEFAULT_OUTCOMES",
    "SandboxServer",
    "SandboxSettings",
    "create_sandbox_app",
]
