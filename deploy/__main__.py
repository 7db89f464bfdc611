"""``python -m fedrec_app.deploy``: the same as ``fedrec deploy``."""

import sys

from .cli import main

__all__: list[str] = []

sys.exit(main())
