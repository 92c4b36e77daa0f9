"""``python -m client``: the ``syncbn`` CLI (``client.cli``)."""

import sys

from client.cli import main

sys.exit(main())
