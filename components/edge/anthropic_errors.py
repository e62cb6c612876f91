"""Anthropic's error shape on the Anthropic Messages routes (components/api/anthropic.py).

Every error answer of the service is OpenAI's shape; on these routes this middleware
rewrites the JSON ones into Anthropic's (`{"type": "error", "error": {"type", "message"}}`),
whoever produced them: keys, rate limits, body limits, validation, the app. Only error
answers are held back, and they are small.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from components.core.errors import anthropic_body

PATHS = frozenset({"/v1/messages", "/v1/messages/count_tokens"})


class AnthropicErrors:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in PATHS:
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []
        sent = False

        async def rewrite(message: Message) -> None:
            nonlocal start, sent
            if message["type"] == "http.response.start":
                content_type = dict(message.get("headers", [])).get(b"content-type", b"")
                if message["status"] >= 400 and content_type.startswith(b"application/json"):
                    start = message
                    return
            elif message["type"] == "http.response.body" and start is not None:
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    sent = True
                    await _send_rewritten(send, start, b"".join(chunks))
                return
            await send(message)

        try:
            await self.app(scope, receive, rewrite)
        finally:
            if start is not None and not sent:
                # The app ended without its last body chunk: what it said still goes out.
                await _send_rewritten(send, start, b"".join(chunks))


async def _send_rewritten(send: Send, start: Message, body: bytes) -> None:
    try:
        message = str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = body.decode("utf-8", "replace") or "Request failed."
    rewritten = json.dumps(anthropic_body(start["status"], message), ensure_ascii=False).encode()
    headers = [(k, v) for k, v in start.get("headers", []) if k != b"content-length"]
    headers.append((b"content-length", str(len(rewritten)).encode()))
    await send({**start, "headers": headers})
    await send({"type": "http.response.body", "body": rewritten})
