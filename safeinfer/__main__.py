"""``python -m safeinfer`` runs the ``safeinfer`` command."""

import sys

from safeinfer.cli import main

sys.exit(main())
