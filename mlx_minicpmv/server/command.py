"""``python -m mlx_minicpmv serve --model DIR_OR_REPO``: the OpenAI-compatible server.

Loads the model, starts the scheduler on a thread of its own (the one owner of MLX), and runs
uvicorn on loopback unless ``--host`` says otherwise.
"""

import argparse
import ipaddress
import logging
import os
import sys
from pathlib import Path

DEFAULT_PORT = 8080


def build_parser() -> argparse.ArgumentParser:
    from ..cli import add_sampling_args

    # argparse names the program after argv[0], which is __main__.py under ``python -m``.
    prog = "python -m mlx_minicpmv serve" if sys.argv[0].endswith("__main__.py") else None
    p = argparse.ArgumentParser(prog=prog,
                                description="Serve MiniCPM-V over the OpenAI chat-completions API (images and video).")
    add_sampling_args(p)
    p.add_argument("--host", default="127.0.0.1", help="Address to bind (default: loopback only).")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"Port (default {DEFAULT_PORT}).")
    p.add_argument("--api-key", default=os.environ.get("MINICPMV_API_KEY"),
                   help="Require 'Authorization: Bearer KEY' (default: $MINICPMV_API_KEY, else none).")
    p.add_argument("--allowed-origins", action="append", default=[],
                   help="A browser origin allowed by CORS, e.g. http://localhost:3000 (repeatable; default none).")
    p.add_argument("--media-dir", action="append", default=[], type=Path,
                   help="A folder whose files requests may name by path or file:// URL (repeatable; default none).")
    p.add_argument("--allow-remote-media", action="store_true", help="Let requests name http(s) image/video URLs.")
    p.add_argument("--max-concurrency", type=int, default=8, help="Requests decoded together (default 8).")
    p.add_argument("--max-queue", type=int, default=32, help="Requests waiting beyond those; more get 503.")
    p.add_argument("--max-request-mb", type=float, default=256, help="Largest request body (default 256 MB).")
    p.add_argument("--max-image-pixels", type=float, default=64e6, help="Largest image (default 64e6 pixels).")
    p.add_argument("--max-video-seconds", type=float, default=3600, help="Longest video (default 3600 s).")
    p.add_argument("--max-video-frames", type=int, default=128, help="Most frames a request may ask for.")
    p.add_argument("--fps", type=float, default=1.0, help="Video frames sampled per second (default 1).")
    p.add_argument("--cache-conversations", type=int, default=32, help="Conversation states kept (default 32).")
    p.add_argument("--cache-gb", type=float, default=4.0, help="Memory for kept states (default 4 GB).")
    p.add_argument("--served-model-name", default=None, help="The model id clients send (default: the folder name).")
    p.add_argument("--log-conversations", action="store_true",
                   help="Log request messages and answers (off by default: nothing of a conversation is logged).")
    return p


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_parts(args, model, processor):
    """(scheduler, resolver, config) from parsed arguments and a loaded model."""
    from ..generate import generation_defaults
    from .app import ServerConfig
    from .conversations import ConversationStore
    from .media import MediaLimits, MediaResolver, VideoOptions
    from .scheduler import Scheduler
    from .sequence import Sampling

    defaults = generation_defaults(processor)
    given = dict(temperature=args.temp, top_p=args.top_p, top_k=args.top_k, min_p=args.min_p,
                 repetition_penalty=args.repetition_penalty, seed=args.seed)
    defaults.update({k: v for k, v in given.items() if v is not None})
    store = ConversationStore(args.cache_conversations, int(args.cache_gb * 2**30))
    scheduler = Scheduler(model, processor, max_concurrency=args.max_concurrency, max_queue=args.max_queue,
                          store=store, default_max_tokens=args.max_tokens)
    limits = MediaLimits(max_image_pixels=int(args.max_image_pixels), max_video_seconds=args.max_video_seconds,
                         max_video_frames=args.max_video_frames)
    resolver = MediaResolver(args.media_dir, args.allow_remote_media, limits)
    name = args.served_model_name or Path(str(args.model).rstrip("/")).name
    config = ServerConfig(
        model_name=name, api_key=args.api_key, allowed_origins=args.allowed_origins,
        max_request_bytes=int(args.max_request_mb * 2**20), sampling=Sampling(**defaults),
        enable_thinking=args.thinking,
        processor_options={"max_slice_nums": args.max_slice_nums} if args.max_slice_nums else {},
        video=VideoOptions(max_num_frames=min(args.max_frames, args.max_video_frames), fps=args.fps),
        log_conversations=args.log_conversations)
    return scheduler, resolver, config


def missing_extra() -> str:
    """The server's own dependencies (the ``server`` extra) that are not installed."""
    import importlib.util

    return " ".join(m for m in ("fastapi", "uvicorn", "llguidance") if importlib.util.find_spec(m) is None)


def main(argv=None) -> int:
    from ..cli import report_errors

    args = build_parser().parse_args(argv)
    if missing_extra():
        print(f"error: the server needs {missing_extra()}; install them with: pip install 'mlx-minicpmv[server]'",
              file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    log = logging.getLogger("mlx_minicpmv.server")

    def run() -> int:
        import uvicorn

        from ..loading import load
        from .app import create_app

        if not is_loopback(args.host) and not args.api_key:
            log.warning("serving on %s without an API key: anyone who can reach this address can use the model "
                        "(and the files under --media-dir); set --api-key", args.host)
        model, processor = load(args.model, adapter_path=args.adapter_path)
        scheduler, resolver, config = server_parts(args, model, processor)
        scheduler.start()
        app = create_app(scheduler, resolver, config)
        log.info("serving %s on http://%s:%d/v1", config.model_name, args.host, args.port)
        try:
            uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=True)
        finally:
            scheduler.stop()
        return 0

    return report_errors(run, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
