"""``lmforge serve CKPT``: the OpenAI-compatible server and chat page for one checkpoint.

    lmforge serve runs/demo                                    # http://127.0.0.1:8000 (chat page at /)
    lmforge serve ckpt/ --port 9000 --api-key sk-local         # or LMFORGE_API_KEY=sk-local
    lmforge serve ckpt/ --host 0.0.0.0 --max-batch-size 64     # other machines: set an API key

It binds to 127.0.0.1 unless ``--host`` says otherwise. Any OpenAI client works::

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="sk-local")
    client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}])
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lmforge.cli_common import console
from lmforge.infer.cli import CheckpointArgument, DeviceOption, DtypeOption, _fail


def default_model_name(checkpoint: Path) -> str:
    """The run's name for a run dir or its checkpoints (runs/demo/pretrain-x/checkpoints/step_1 -> pretrain-x)."""
    path = checkpoint.resolve()
    if path.name.startswith("step_") and path.parent.name == "checkpoints":
        path = path.parent.parent
    return path.name or "lmforge"


def serve(
    checkpoint: CheckpointArgument,
    host: Annotated[str, typer.Option("--host", help="Address to bind; 0.0.0.0 exposes the server to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port (0: any free port, printed at start).")] = 8000,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="LMFORGE_API_KEY",
                                                   help="Require 'Authorization: Bearer KEY' on /v1 (default: $LMFORGE_API_KEY, else none).",
                                                   show_default=False)] = None,
    model_name: Annotated[Optional[str], typer.Option("--model-name", help="Model id clients send (default: the run's directory name).",
                                                      show_default=False)] = None,
    max_batch_size: Annotated[int, typer.Option("--max-batch-size", help="Requests decoded together at most; more wait their turn.")] = 32,
    max_prefill_tokens: Annotated[int, typer.Option("--max-prefill-tokens", help="Prompt tokens admitted per scheduling step.")] = 4096,
    cors_origin: Annotated[Optional[list[str]], typer.Option("--cors-origin", help="Allow browser pages from this origin (repeatable; '*' for any).",
                                                             show_default=False)] = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level: warning, info, debug.")] = "info",
) -> None:
    """Serve a checkpoint over the OpenAI API (chat and completions, streaming) with a browser chat page."""
    import socket

    import uvicorn

    from lmforge.infer.engine import Engine
    from lmforge.serve.app import create_app
    from lmforge.serve.scheduler import load_off_thread

    if max_batch_size < 1 or max_prefill_tokens < 1:
        _fail("--max-batch-size and --max-prefill-tokens must be >= 1")
    try:
        engine = load_off_thread(Engine.from_checkpoint, checkpoint, device=device, dtype=None if dtype == "auto" else dtype,
                                 overflow="error")
    except (FileNotFoundError, ValueError, OSError, RuntimeError) as exc:  # RuntimeError: e.g. --device cuda without one
        _fail(str(exc))
    name = model_name or default_model_name(engine.checkpoint_dir)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        console.print(f"warning: serving on {host} without an API key; anyone who can reach it can use it (--api-key)")
    app = create_app(engine, name, api_key=api_key or None, max_batch_size=max_batch_size,
                     max_prefill_tokens=max_prefill_tokens, cors_origins=cors_origin)
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    bound = sock.getsockname()[1]
    weight = engine.model.model.embed_tokens.weight
    console.print(f"serving {engine.checkpoint_dir} as '{name}' ({weight.device}, {str(weight.dtype).removeprefix('torch.')}, "
                  f"context {engine.max_context}, batch ≤ {max_batch_size})", markup=False, soft_wrap=True)
    shown = f"[{host}]" if ":" in host else host
    console.print(f"chat page: http://{shown}:{bound}/    API: http://{shown}:{bound}/v1" + ("  (API key required)" if api_key else ""),
                  markup=False, soft_wrap=True)
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])

