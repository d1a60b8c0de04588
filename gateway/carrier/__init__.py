"""Everything the gateway knows about the fax carrier (Voxtelesys), behind one small interface.

- client.py: the REST client (`VoxtelesysClient`).
- models.py: the fax object (`CarrierFax`), read from responses and webhooks.
- errors.py: typed API errors, transient or not.
- faxerrors.py: the fax error code table and retry advice.
- status.py: status words classified as pending, succeeded or failed.
"""

from gateway.carrier.client import VoxtelesysClient
from gateway.carrier.errors import (
    AuthError,
    BadResponse,
    CarrierError,
    CarrierUnavailable,
    NotFound,
    Rejected,
    ServerError,
)
from gateway.carrier.faxerrors import FaxErrorInfo, describe
from gateway.carrier.models import CarrierFax, PayloadError
from gateway.carrier.status import Outcome, classify

__all__ = [
    "AuthError",
    "BadResponse",
    "CarrierError",
    "CarrierFax",
    "CarrierUnavailable",
    "FaxErrorInfo",
    "NotFound",
    "Outcome",
    "PayloadError",
    "Rejected",
    "ServerError",
    "VoxtelesysClient",
    "classify",
    "describe",
]
