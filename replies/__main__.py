"""``python -m replies``: see :mod:`replies.cli`."""

import sys

from replies.cli import main

sys.exit(main())
