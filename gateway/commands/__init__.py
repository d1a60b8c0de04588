"""The verbs of the `fax-gateway` command, one module each."""
