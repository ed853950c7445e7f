"""`python -m corelm ...` runs the `corelm` command line."""

import sys

from corelm.cli import main

sys.exit(main())
