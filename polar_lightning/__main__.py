"""``python -m polar_lightning ...`` is the ``polar-lightning`` command."""

import sys

from polar_lightning.cli import main

if __name__ == "__main__":
    sys.exit(main())
