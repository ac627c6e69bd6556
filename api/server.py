"""Running the app under uvicorn, and ending it cleanly on SIGINT or SIGTERM.

On either signal uvicorn stops accepting connections and waits for the open ones;
sse-starlette then sets each stream's shutdown event, which ends the stream with
`retry:` (api/stream.py), so the wait is short; then the lifespan shuts down.
"""

from __future__ import annotations

import os
import signal

from cdc.settings import Settings


def serve(url: str, settings: Settings, host: str | None, port: int | None, workers: int) -> None:
    """Serve on `host`:`port` (settings' by default) until SIGINT or SIGTERM, then return."""
    import uvicorn

    from api.app import create_app

    bind_host = settings.host if host is None else host
    bind_port = settings.port if port is None else port
    # After its graceful shutdown uvicorn raises the signal again, with the handler it
    # found, so that whoever embeds it learns of it. Python's default for SIGTERM
    # kills the process by the signal (exit -15); SIGINT's raises KeyboardInterrupt,
    # which uvicorn.run absorbs. SIGTERM gets the same handler: a requested stop that
    # went well exits 0, as docs/operations.md says.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # log_config=None: uvicorn's records go through the logging set up by `cli`;
    # access_log=False: api.logs.RequestLog writes the one line per request.
    if workers > 1:
        # Worker processes build their own app from the environment: hand them the
        # resolved URL (the embedded server's, when DATABASE_URL was unset).
        os.environ["DATABASE_URL"] = url
        uvicorn.run(
            "api.app:app_from_env", factory=True, workers=workers,
            host=bind_host, port=bind_port, log_config=None, access_log=False,
        )  # fmt: skip
    else:
        app = create_app(settings, database_url=url)
        uvicorn.run(app, host=bind_host, port=bind_port, log_config=None, access_log=False)
