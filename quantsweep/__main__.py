"""``python -m quantsweep`` runs the command line."""

import sys

from quantsweep.cli import main

sys.exit(main())
