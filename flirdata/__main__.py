"""``python -m flirdata`` behaves exactly like the ``flirdata`` console script."""

from __future__ import annotations

import sys

from flirdata.cli import main

if __name__ == "__main__":
    sys.exit(main())
