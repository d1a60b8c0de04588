"""`python -m gateway` is the `fax-gateway` command."""

from gateway.cli import main

raise SystemExit(main())
