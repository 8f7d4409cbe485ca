"""An OpenAI-compatible HTTP server for MiniCPM-V that takes images and videos.

``protocol`` (the wire format and errors), ``media`` (where images and videos come from, and
the limits), ``conversations`` (model states kept between turns), ``grammar`` (constrained
decoding for ``response_format``), ``output`` (tokens to reasoning/answer text),
``sequence`` and ``batch`` (one request's prefill; the decode batch), ``scheduler`` (the one
owner of MLX), ``app`` (the ASGI app), ``command`` (``python -m mlx_minicpmv serve``).
"""
