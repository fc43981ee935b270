"""Demo apps that app servers run in subprocesses: each pattern of the articles, broken and fixed.

Import strings for ``streamlab.Uvicorn`` / ``streamlab.Gunicorn`` (configuration by
environment variables, see ``streamlab.apps._common``)::

    streamlab.apps.ticker:app        model-free plain-ASGI ticks, /json, /block, /health, /whoami
    streamlab.apps.chat:app          /chat/buffered (JSON at the end) vs /chat/sse (sse-starlette)  seeds/002
    streamlab.apps.blocking:app      sync stream/invoke/sleep in async def vs astream/ainvoke         seeds/002
    streamlab.apps.shared_state:app  module-level token buffer vs per-request state                  seeds/002
    streamlab.apps.jobs:app          long /report vs POST /jobs + status + resumable SSE             seeds/004
    streamlab.apps.graph:app         LangGraph sync graph.stream() in async def vs astream()         seeds/004
    streamlab.apps.graph_wsgi:app    plain WSGI generator of graph.stream() for gunicorn sync workers seeds/004
    streamlab.apps.ticker_wsgi:app   model-free WSGI ticks for gunicorn sync workers

Every app logs its request id, each token, the end, and how a client left
(``CLIENT DISCONNECT (CancelledError|GeneratorExit|http.disconnect) after N tokens``).
Nothing here is imported by ``streamlab`` itself.
"""
