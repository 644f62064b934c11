"""Serving: an OpenAI-compatible server with continuous batching, and a browser chat page.

    lmforge serve runs/demo                    # http://127.0.0.1:8000/ (page) and /v1 (API)

``scheduler.py`` batches concurrent requests over the one inference engine, ``app.py`` is the
FastAPI adapter (``protocol.py``: the wire format), ``static/`` the chat page, ``cli.py`` the
command. From Python: ``create_app(load_off_thread(Engine.from_checkpoint, ckpt), "name")`` is
an ASGI app (``scheduler.load_off_thread``: why the model is loaded on a thread of its own).
"""
