"""`python -m service_discovery` is the CLI."""

from service_discovery.cli import main

raise SystemExit(main())
