"""Convert a MiniCPM-V 4.6 Hugging Face checkpoint to MLX: ``python convert.py --hf-path ... --mlx-path ...``."""

import sys

from mlx_minicpmv.convert import main

if __name__ == "__main__":
    sys.exit(main())
