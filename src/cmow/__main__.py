"""``python -m cmow``: the ``cmow`` command, also where the virtual environment is not activated."""

import sys

from .cli import main

sys.exit(main())
