"""The administrator's copy (`notify.admin`): what the people running the gateway are told.

- every failure report, as a blind copy (gateway/outbound/reports.py adds them);
- every dead letter and every held job, one mail each (copies.py);
- a daily summary at `notify.summary_time` (summary.py).

Every mail goes through the outbox under a key of its own, so each is sent once.
"""
