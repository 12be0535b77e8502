"""``python -m svldrl`` (and ``torchrun -m svldrl train ...``)."""

import sys

from svldrl.cli import main

sys.exit(main())
