"""The carrier's fax error codes: what each means and whether sending again later may help.

The table is the "Fax Errors" table of the Voxtelesys documentation, code for code. Whether a
code is retryable is our reading of the T.30 condition behind it:

- Not retryable: the document itself (4201 format, 4202 size, 5141-5146 TIFF/F structure)
  or a fixed property or policy of the receiving machine (5108 incompatible, 5111/5112
  resolution or page size it cannot take, 5150 polling refused, 5151-5161 identities,
  addresses or passwords it will not accept). The same fax to the same machine fails the
  same way, and retrying only costs money and the sender's time.
- Retryable: everything that depends on the call rather than the document: busy or not
  answering (5109), training, timeouts and unexpected disconnects on a noisy line (5101-5107,
  5113-5140, 5148, 5149), the carrier's own internal errors (53xx, including 5314 failed to
  fetch the file, which a fresh document URL may cure), a download that failed (4203), and
  the catch-all 5100.

A code not in the table is retryable unless it is in the 42xx document block: a wrong "retry"
costs a few bounded attempts, a wrong "give up" loses a fax that would have gone through.
"""

from __future__ import annotations

from typing import NamedTuple


class FaxErrorInfo(NamedTuple):
    code: int | None
    description: str
    retryable: bool


FAX_ERRORS: dict[int, str] = {
    4201: "file format invalid",
    4202: "file too large",
    4203: "file download failed",
    5100: "unknown fax failure",
    5101: "the CED tone exceeded 5s",
    5102: "timed out waiting for initial communication",
    5103: "timed out waiting for the first message",
    5104: "timed out waiting for procedural interrupt",
    5105: "the HDLC carrier did not stop in a timely manner",
    5106: "failed to train with any of the compatible modems",
    5107: "operator intervention failed",
    5108: "far end is not compatible",
    5109: "far end is not able to receive",
    5110: "far end is not able to transmit",
    5111: "far end cannot receive at the resolution of the image",
    5112: "far end cannot receive at the size of image",
    5113: "unexpected message received",
    5114: "received bad response to DCS or training",
    5115: "received a DCN from remote after sending a page",
    5116: "invalid ECM response received from receiver",
    5117: "received a DCN while waiting for a DIS",
    5118: "invalid response after sending a page",
    5119: "received other than DIS while waiting for DIS",
    5120: "received no response to DCS, training or TCF",
    5121: "no response after sending a page",
    5122: "timed out waiting for receiver ready (ECM mode)",
    5123: "invalid ECM response received from transmitter",
    5124: "DCS received while waiting for DTC",
    5125: "unexpected command after page received",
    5126: "carrier lost during fax receive",
    5127: "timed out while waiting for EOL (end of line)",
    5128: "timed out while waiting for first line",
    5129: "timer T2 expired while waiting for DCN",
    5130: "timer T2 expired while waiting for phase D",
    5131: "timer T2 expired while waiting for fax page",
    5132: "timer T2 expired while waiting for next fax page",
    5133: "timer T2 expired while waiting for RR command",
    5134: "timer T2 expired while waiting for NSS, DCS or MCF",
    5135: "unexpected DCN while waiting for DCS or DIS",
    5136: "unexpected DCN while waiting for image data",
    5137: "unexpected DCN while waiting for EOM, EOP or MPS",
    5138: "unexpected DCN after EOM or MPS sequence",
    5139: "unexpected DCN after RR/RNR sequence",
    5140: "unexpected DCN after requested retransmission",
    5141: "TIFF/F file cannot be opened",
    5142: "TIFF/F page not found",
    5143: "TIFF/F format is not compatible",
    5144: "TIFF/F page number tag missing",
    5145: "incorrect values for TIFF/F tags",
    5146: "bad TIFF/F header - incorrect values in fields",
    5147: "cannot allocate memory for more pages",
    5148: "disconnected after permitted retries",
    5149: "the call dropped prematurely",
    5150: "poll not accepted",
    5151: "far end's ident is not acceptable",
    5152: "far end's sub-address is not acceptable",
    5153: "far end's selective polling address is not acceptable",
    5154: "far end's polled sub-address is not acceptable",
    5155: "far end's sender identification is not acceptable",
    5156: "far end's password is not acceptable",
    5157: "far end's transmitting subscriber internet address is not acceptable",
    5158: "far end's internet routing address is not acceptable",
    5159: "far end's calling subscriber internet address is not acceptable",
    5160: "far end's internet selective polling address is not acceptable",
    5161: "far end's called subscriber internet address is not acceptable",
    **{code: "internal error" for code in range(5300, 5318)},
    5314: "failed to fetch file",
}

# See the module docstring for the reasoning.
NOT_RETRYABLE: frozenset[int] = frozenset(
    {4201, 4202, 5108, 5111, 5112, *range(5141, 5147), *range(5150, 5162)}
)

# The document block: errors found in the file before any call is made.
_DOCUMENT_BLOCK = range(4200, 4300)


# Final status words that mean the line was busy or nobody answered, when no code comes with them.
BUSY_STATUSES = frozenset({"busy", "no-answer", "no_answer"})


def resubmittable(status: str, code: int | None) -> bool:
    """Whether sending the same fax again later (fax.resubmit_attempts) may go through.

    Yes for failures of the call: a retryable 5xxx code (busy, no answer, training, a dropped
    line: 51xx; the carrier's internal 53xx, including 5314 "failed to fetch file", since every
    resubmission gets a freshly signed document URL) and a busy or no-answer status without a
    code. Never for 4xxx (the document or its download, found before any call), for a fixed
    property of the far end (NOT_RETRYABLE), or for a failure without a code or a busy word.
    """
    if code is None:
        return (status or "").strip().lower() in BUSY_STATUSES
    return 5000 <= code < 6000 and describe(code).retryable


def describe(code: int | str | None) -> FaxErrorInfo:
    """Description and retry advice for a fax error code, known or not.

    Accepts the code as the carrier sends it (a number, or a string in webhooks).
    """
    if code is None or (isinstance(code, str) and not code.strip()):
        return FaxErrorInfo(None, "fax failed without an error code", True)
    try:
        number = int(code)
    except (TypeError, ValueError):
        return FaxErrorInfo(None, f"unknown fax error {code!r}", True)
    description = FAX_ERRORS.get(number)
    if description is not None:
        return FaxErrorInfo(number, description, number not in NOT_RETRYABLE)
    return FaxErrorInfo(number, f"unknown fax error {number}", number not in _DOCUMENT_BLOCK)
