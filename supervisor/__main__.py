"""`python -m supervisor` is the `neko-supervisor` command."""

import sys

from supervisor.cli import main

sys.exit(main())
