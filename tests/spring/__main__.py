"""``python -m tests.spring``: build the Spring interop program once and print its folder."""

import sys

from tests.spring import main

sys.exit(main())
