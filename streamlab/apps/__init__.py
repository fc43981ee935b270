"""Demo apps that app servers run in subprocesses: each pattern of the articles, broken and fixed.

Import strings for ``streamlab.Uvicorn`` / ``streamlab.Gunicorn`` (configuration by
environment variables, see ``streamlab.apps._common``)::

    streamlab.apps.ticker:app        model-free plain-ASGI ticks, /json, /block, /health, /whoami
    streamlab.apps.chat:app          /chat/buffered (JSON at the end) vs /chat/sse (sse-starlette)       article "LangChain scaling"
    streamlab.apps.blocking:app      sync stream/invoke/sleep in async def vs astream/ainvoke            article "LangChain scaling"
    streamlab.apps.shared_state:app  module-level token buffer vs per-request state                      article "LangChain scaling"
    streamlab.apps.jobs:app          long /report vs POST /jobs + status + resumable SSE                 article "LangGraph scaling"
    streamlab.apps.graph:app         LangGraph sync graph.stream() in async def vs astream()             article "LangGraph scaling"
    streamlab.apps.graph_wsgi:app    plain WSGI generator of graph.stream() for gunicorn sync workers    article "LangGraph scaling"
    streamlab.apps.ticker_wsgi:app   model-free WSGI ticks for gunicorn sync workers
    streamlab.apps.heartbeat:app     /sse with or without streamlab.fixes.heartbeat (: ping)             streamlab.fixes
    streamlab.apps.resumable:app     POST /runs + GET /runs/{id}/stream with Last-Event-ID on Redis      streamlab.fixes
    streamlab.apps.idempotent:app    Idempotency-Key: a retried request never runs the model twice       streamlab.fixes
    streamlab.apps.ws:app            ChatOpenAI.astream tokens over a WebSocket (/ws/chat), pings        streamlab.fixes
    streamlab.apps.switches:app      heartbeat / BaseHTTPMiddleware / cancel-or-continue as env switches  incidents

Every app logs its request id, each token, the end, and how a client left
(``CLIENT DISCONNECT (CancelledError|GeneratorExit|http.disconnect) after N tokens``).
Nothing here is imported by ``streamlab`` itself.
"""
