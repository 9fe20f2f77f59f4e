"""Counters for the portal's sign-in link form, in the shared cache (Redis).

A fixed window per counter: ``hit`` counts one request and says whether the count is within
the limit. Redis down: the limit fails open (the request is let through) with a logged
warning, as the API's rate limit does; the form still answers as usual.
"""

from __future__ import annotations

import hashlib
import logging
import time

from django.core.cache import cache

log = logging.getLogger(__name__)


def hit(*, scope: str, value: str, limit: int, window_seconds: int = 3600) -> bool:
    """Count a request for ``value`` (an e-mail, a client address) in ``scope``; True while
    the count of this window is at most ``limit``."""
    window = int(time.time() // window_seconds)
    digest = hashlib.sha256(value.encode()).hexdigest()[:32]  # no addresses in Redis
    key = f"ratelimit:{scope}:{digest}:{window}"
    try:
        cache.add(key, 0, timeout=window_seconds + 60)
        count = cache.incr(key)
    except Exception as error:  # noqa: BLE001 - any cache failure: let the request through
        log.warning("%s limit not enforced: the cache (Redis) is unreachable (%s)", scope, error)
        return True
    return count <= limit
