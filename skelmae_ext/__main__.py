"""``python -m skelmae_ext``: the ``skelmae`` command line."""

import sys

from .cli import main

sys.exit(main())
