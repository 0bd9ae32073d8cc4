"""``python -m evaluation.cli.main``: the ``valle`` command."""

import sys

from evaluation.cli.main.main import main

sys.exit(main())
