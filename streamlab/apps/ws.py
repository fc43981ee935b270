"""The other transport: ``ChatOpenAI.astream`` tokens over a WebSocket (issue 12, LangChain article).

    uvicorn streamlab.apps.ws:app --ws-ping-interval 20      env: STREAMLAB_MODEL_URL=http://127.0.0.1:PORT/v1

    WS  /ws/chat?q=...&spec=...&ping=S   one JSON text message per token
                                         ``{"type": "token", "i": 0, "text": "..."}``, then
                                         ``{"type": "done", "tokens": N}`` and a close with 1000.
                                         A model error: ``{"type": "error", "message": ...}``, close 1011.
                                         ``ping=S`` (scenario seconds): an *application* keep-alive,
                                         ``{"type": "ping"}`` every S seconds while the model is silent
                                         (data frames: every hop sees them, whatever it counts).
    GET /health                          answers at once while the event loop is free.

Protocol-level ping frames are uvicorn's: ``--ws-ping-interval S --ws-ping-timeout S``
(real seconds; uvicorn's default is a ping every 20 s, ``0`` turns them off). The
client's library answers them with pongs, so they keep a hop that counts traffic
in both directions (nginx, an ALB) from timing out, without any message for the app.

``spec`` selects the mock's behaviour for this request (``stall@5=30``, ``cut@12``, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import langchain_openai  # noqa: F401 - import at startup, not on the first request (it blocks the loop)
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from .._timescale import to_real
from ._common import llm_tokens, log, request_id, spec_of, traced, warm_start

PROMPT = "Explain RFC 9110 in 3 bullets"
ROUTE = "/ws/chat"

app = FastAPI(title="streamlab chat over a WebSocket", lifespan=warm_start)


def _ping_interval(raw: str | None) -> float | None:
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        return -1.0
    return value if value > 0 else -1.0


@app.websocket(ROUTE)
async def ws_chat(websocket: WebSocket) -> None:
    query = websocket.query_params
    rid, spec = request_id(websocket.headers), spec_of(query, websocket.headers)
    q = query.get("q") or PROMPT
    ping = _ping_interval(query.get("ping"))
    await websocket.accept()  # then a refusal can say why (a close before accept is a bare HTTP 403)
    if ping is not None and ping < 0:
        await websocket.close(code=1008, reason="ping must be a positive number of seconds")
        return
    sent = 0
    lock = asyncio.Lock()
    pinger: asyncio.Task | None = None

    async def send(message: dict) -> None:
        async with lock:
            await websocket.send_json(message)

    async def keepalive(interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await send({"type": "ping"})

    try:
        if ping is not None:
            pinger = asyncio.create_task(keepalive(to_real(ping)))
        try:
            async for text in traced(rid, ROUTE, llm_tokens(q, spec)):
                await send({"type": "token", "i": sent, "text": text})
                sent += 1
        except (WebSocketDisconnect, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - the model failed: say so on the socket (if it is still open)
            with contextlib.suppress(Exception):
                await send({"type": "error", "message": f"{type(exc).__name__}: {exc}"})
                await websocket.close(code=1011, reason="model stream failed")
            return
        await send({"type": "done", "tokens": sent})
        await websocket.close(code=1000)
    except WebSocketDisconnect as exc:
        log(rid, ROUTE, f"CLIENT DISCONNECT (WebSocketDisconnect {exc.code}) after {sent} tokens")
    finally:
        if pinger is not None:
            pinger.cancel()
            with contextlib.suppress(BaseException):
                await pinger


@app.get("/health")
async def health():
    return {"ok": True, "pid": os.getpid()}
