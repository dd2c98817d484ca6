"""Which URLs a webhook may be sent to.

Only http(s) URLs with a host. Unless ``WEBHOOK_ALLOW_PRIVATE`` is on, every address the host
resolves to must be public: a loopback, private, link-local (cloud metadata), reserved or
multicast address is refused, so a user cannot make the workers call the platform's own
network. The check runs when the job is created (a clear 4xx) and again before every attempt
(the name may resolve elsewhere by then). Redirects are never followed, for the same reason.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from django.conf import settings

MAX_URL_LENGTH = 2048


class WebhookUrlInvalid(ValueError):
    """The URL is not one a webhook may go to; the message says why, for the client."""


def _addresses(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise WebhookUrlInvalid(f"Webhook host {host!r} does not resolve: {exc}.") from None
    # An IPv6 scope ("fe80::1%eth0") is not part of the address.
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def webhook_url_check(url: object, *, allow_loopback: bool = False) -> str:
    """``url`` if a webhook may be sent there, else ``WebhookUrlInvalid``. ``allow_loopback``:
    loopback addresses are allowed (langgraph.json's ``disable_loopback: false``)."""
    if not isinstance(url, str) or not url:
        raise WebhookUrlInvalid("Webhook must be a non-empty URL string.")
    if len(url) > MAX_URL_LENGTH:
        raise WebhookUrlInvalid(f"Webhook URL is longer than {MAX_URL_LENGTH} characters.")
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise WebhookUrlInvalid(f"Webhook URL is not valid: {exc}.") from None
    if parts.scheme not in ("http", "https"):
        raise WebhookUrlInvalid("Webhook URL must use http or https.")
    if not parts.hostname:
        raise WebhookUrlInvalid("Webhook URL must have a host.")
    if parts.username is not None or parts.password is not None:
        raise WebhookUrlInvalid("Webhook URL must not carry credentials.")
    if settings.WEBHOOK_ALLOW_PRIVATE:
        return url
    for address in _addresses(parts.hostname, port):
        if allow_loopback and address.is_loopback:
            continue
        if not address.is_global or address.is_multicast:
            raise WebhookUrlInvalid(
                f"Webhook URL host {parts.hostname!r} resolves to {address}, a loopback, private "
                "or link-local address, which webhooks may not call (WEBHOOK_ALLOW_PRIVATE)."
            )
    return url
