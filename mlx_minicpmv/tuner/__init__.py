"""Fine-tuning MiniCPM-V with LoRA, DoRA or all weights, in mlx-lm's ``tuner`` shape.

``data.py`` turns a folder of jsonl chats with images and videos into batches with the loss on
the answers, ``adapters.py`` puts adapters in a model and saves, loads and fuses them, and
``trainer.py`` runs the steps. ``lora.py`` and ``fuse.py`` are the command lines.
"""
