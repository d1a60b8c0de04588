"""Email to fax after the SMTP reply: one worker per job transition.

    received --prepare--> prepared --upload--> uploaded --submit--> submitted (per fax)

Each stage claims due work from the store, does one step, and records the outcome in one
transaction; the carrier's answer arrives later by webhook (gateway/callbacks/events.py). `cleanup`
removes documents once every fax of a job is final and told.
"""
