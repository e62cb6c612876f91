"""One streamed completion that a test holds open and closes itself, for the integration
tests that fill the engine's places and read which waiting request started first."""

from __future__ import annotations

import threading
import time

import httpx

PROMPT = "The capital of France is"


class HeldStream:
    """`first_at`: when its first token came (client side, for ordering only); `chunks`: data
    lines so far; `close`: end it (the client goes away, the engine aborts it)."""

    def __init__(self, base_url: str, headers: dict[str, str], max_tokens: int = 3000) -> None:
        self.url = f"{base_url}/v1/completions"
        self.body = {"prompt": PROMPT, "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
        self.headers = headers
        self.first = threading.Event()
        self.first_at = float("inf")
        self.chunks = 0
        self.close = threading.Event()

    def run(self) -> int:
        with httpx.stream("POST", self.url, json=self.body, headers=self.headers, timeout=300) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    self.chunks += 1
                    if not self.first.is_set():
                        self.first_at = time.monotonic()
                        self.first.set()
                if self.close.is_set():
                    break
            return r.status_code
