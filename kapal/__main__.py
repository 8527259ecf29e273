"""`python -m kapal` is the `kapal` command."""

from kapal.cli import main

raise SystemExit(main())
