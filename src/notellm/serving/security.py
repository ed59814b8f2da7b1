"""Tokens and rate limits for the API.

Token: `Authorization: Bearer <token>` (or `X-API-Key: <token>`), compared in constant time. No token: 401
with `WWW-Authenticate: Bearer`; a wrong one: 403. Write endpoints always need it when the server has one;
read endpoints only with `protect_reads`.

Rate limit: a token bucket per client (its token when it sends one, else its address) on the endpoints that
run the model, so one client cannot starve the others of the single model thread. Over the limit: 429 with
`Retry-After`.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import threading
import time

from fastapi import HTTPException, Request

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def presented_token(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth is not None:
        scheme, _, value = auth.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else ""
    return request.headers.get("x-api-key")


class TokenCheck:
    def __init__(self, api_key: str | None):
        self.key = api_key.encode("utf-8") if api_key else None

    def valid(self, token: str | None) -> bool:
        return bool(self.key and token) and hmac.compare_digest(token.encode("latin-1", "replace"), self.key)

    def __call__(self, request: Request) -> None:
        if self.key is None:
            return
        token = presented_token(request)
        if token is None:
            raise HTTPException(401, "this endpoint needs the server's API token: send `Authorization: Bearer "
                                     "<token>` (or `X-API-Key: <token>`)", headers={"WWW-Authenticate": "Bearer"})
        # header values arrive as latin-1 text; compare the bytes the client sent
        if not hmac.compare_digest(token.encode("latin-1", "replace"), self.key):
            raise HTTPException(403, "the API token is not valid for this server")


class RateLimit:
    """Token bucket per client: `per_second` sustained, `burst` at once. 0 disables it."""

    def __init__(self, per_second: float = 0.0, burst: int | None = None, max_clients: int = 10_000,
                 tokens: TokenCheck | None = None):
        self.tokens = tokens  # only a valid token names a client: made-up tokens would each get a fresh bucket
        self.rate = float(per_second)
        self.burst = float(burst if burst is not None else max(1, math.ceil(2 * per_second)))
        self.max_clients = max_clients
        self.buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, time)
        self.lock = threading.Lock()
        self.refused = 0

    def client_of(self, request: Request) -> str:
        token = presented_token(request)
        if self.tokens is not None and self.tokens.valid(token):
            return "token:" + hmac.new(b"notellm", token.encode("latin-1", "replace"), "sha256").hexdigest()[:16]
        return "addr:" + (request.client.host if request.client else "?")

    def __call__(self, request: Request) -> None:
        if self.rate <= 0:
            return
        client, now = self.client_of(request), time.monotonic()
        with self.lock:
            if len(self.buckets) >= self.max_clients and client not in self.buckets:
                self.buckets.clear()  # bounded memory: forgetting buckets only ever lets clients through
            tokens, last = self.buckets.get(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self.refused += 1
                wait = math.ceil((1.0 - tokens) / self.rate)
                self.buckets[client] = (tokens, now)
                raise HTTPException(429, f"too many requests: this server allows {self.rate:g} model requests "
                                         f"per second per client (bursts of {self.burst:g})",
                                    headers={"Retry-After": str(wait)})
            self.buckets[client] = (tokens - 1.0, now)
