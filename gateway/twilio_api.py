"""Twilio's REST API, through the official ``twilio`` package: the client outbound calls use
(gateway/outbound.py), pointed at ``TWILIO_API_URL`` and bounded in time."""

from __future__ import annotations

import logging

from twilio.http.async_http_client import AsyncTwilioHttpClient

# The package logs every request at INFO: kept to warnings.
REST_LOG = logging.getLogger("gateway.outbound.rest")
REST_LOG.setLevel(logging.WARNING)

TWILIO_API = "https://api.twilio.com"
REST_TIMEOUT_S = 10.0  # a request to Twilio's API that takes longer has failed


class RedirectedHttpClient(AsyncTwilioHttpClient):
    """The ``twilio`` package's documented hook for how its requests go (a custom ``http_client``),
    used for where: Twilio's API, or ``TWILIO_API_URL`` (the local stand-in, softphone/twilio_rest.py);
    and for how long: the package's async client leaves a request unbounded unless given a timeout."""

    def __init__(self, base_url: str):
        super().__init__(logger=REST_LOG, timeout=REST_TIMEOUT_S)
        self.base_url = base_url.rstrip("/")

    async def request(self, method: str, url: str, *args, timeout: float | None = None, **kwargs):
        if url.startswith(TWILIO_API):
            url = self.base_url + url[len(TWILIO_API):]
        return await super().request(method, url, *args, timeout=timeout or self.timeout, **kwargs)
