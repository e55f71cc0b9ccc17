"""Request rates: per user on the authenticated API, per client address on the endpoints without credentials.

Rates come from the settings at each request (``SAGAS_API_THROTTLE_RATE``,
``SAGAS_SIGNAL_THROTTLE_RATE``, ``SAGAS_AUTH_THROTTLE_RATE``; None turns a throttle off) rather than from
``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]``, which DRF binds once at import.
Counts live in the shared cache, so the limit holds across web processes. A
throttled request answers 429 with ``Retry-After`` (DRF's exception handler).
The client address is ``REMOTE_ADDR`` unless ``SAGAS_NUM_PROXIES`` trusted
proxies stand in front (DRF's ``NUM_PROXIES``): a client cannot pick its own
``X-Forwarded-For``.
"""
from django.conf import settings
from rest_framework.throttling import AnonRateThrottle, UserRateThrottle


class ApiUserThrottle(UserRateThrottle):
    """The authenticated API, per user (an anonymous request that gets this far: per address)."""

    scope = "api"
    rate_setting = "SAGAS_API_THROTTLE_RATE"  # the schema names it in its 429

    def get_rate(self) -> str | None:
        return getattr(settings, self.rate_setting)


class SignalTokenThrottle(AnonRateThrottle):
    """The token endpoints need no credentials: per client address, so guessing tokens is slow."""

    scope = "signal"
    rate_setting = "SAGAS_SIGNAL_THROTTLE_RATE"

    def get_rate(self) -> str | None:
        return getattr(settings, self.rate_setting)

    def get_cache_key(self, request, view) -> str:
        # AnonRateThrottle skips authenticated users; these views authenticate nobody.
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class AuthTokenThrottle(SignalTokenThrottle):
    """``POST /api/auth/token/`` takes a password: per client address, so guessing passwords is slow too,
    counted apart from the signal tokens (a busy callback sender locks nobody out of logging in)."""

    scope = "auth_token"
    rate_setting = "SAGAS_AUTH_THROTTLE_RATE"
