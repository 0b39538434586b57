"""`python -m edge_distill` is the `edge-distill` command."""

import sys

from edge_distill.cli import main

sys.exit(main())
