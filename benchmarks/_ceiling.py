"""The ceiling: the smallest raw-ASGI SSE server we could write, on the same uvicorn settings.

Answers every POST with ``n`` OpenAI-shaped chunks and [DONE], no timing model,
no faults, no journal. Run as ``uvicorn benchmarks._ceiling:app``; ``n`` comes
from the ``CEILING_CHUNKS`` environment variable.
"""

import os

N = int(os.environ.get("CEILING_CHUNKS", "6"))
CHUNK = (b'data: {"id":"c","object":"chat.completion.chunk","created":0,"model":"m","choices":[{"index":0,'
         b'"delta":{"content":" word"},"logprobs":null,"finish_reason":null}]}\n\n')


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream")]})
    for _ in range(N):
        await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
