"""Benchmarks of the gateway (`make bench`): speed measured against a baseline in the same run.

Each benchmark runs the gateway's real code and a baseline doing the bare minimum of the same
job (a server that only says 250, a raw POST, plain INSERTs) on this machine, in this process,
one after the other, and prints both figures and their ratio: how many times the baseline's
cost the gateway pays for what it adds (durability, validation, the queue). Ratios travel
between machines far better than absolute figures; nothing here passes or fails on speed.
Loopback only, no sleeps, bounded in count; the whole run takes well under two minutes.
"""
