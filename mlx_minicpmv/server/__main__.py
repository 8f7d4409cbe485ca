"""``python -m mlx_minicpmv.server``: the same as ``python -m mlx_minicpmv serve``."""

import sys

from .command import main

sys.exit(main())
