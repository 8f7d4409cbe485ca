"""Convert a MiniCPM-V 4.6 Hugging Face checkpoint to MLX: ``python convert.py --hf-path ... --mlx-path ...``."""

import sys

try:
    from mlx_minicpmv.convert import main
except KeyboardInterrupt:  # Ctrl-C while MLX and the tokenizer libraries load: nothing was written
    print("\ninterrupted; nothing was written", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())
