"""``python -m workers run SPEC.json``: see ``workers.cli``."""

from workers.cli import main

raise SystemExit(main())
