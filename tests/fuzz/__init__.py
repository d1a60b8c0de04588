"""Coverage-guided fuzzing (atheris) of what strangers send: mail, webhooks, numbers.

`make fuzz` runs each target for a bounded time: `python -m tests.fuzz TARGET SECONDS`. A
target fails (exit 1, the input saved as crash-*) when the code raises anything but its one
documented error, or a single input takes more than a few seconds.
"""
