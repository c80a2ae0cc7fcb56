"""Token mode: the single-tenant bearer token of ``gateway.auth_token_file``."""

from __future__ import annotations

import hmac

from huselet.tenants.stats import RefusalReason


def bearer_problem(authorization: bytes | None, token: bytes) -> tuple[RefusalReason, str] | None:
    """Why ``authorization`` is not ``Bearer <token>`` (reason, message), or None when it is."""
    if authorization is None:
        return RefusalReason.MISSING_AUTH, "missing bearer token"
    scheme, _, credentials = authorization.partition(b" ")
    # compare_digest: the time taken must not reveal how much of the token matched.
    if scheme.lower() != b"bearer" or not hmac.compare_digest(credentials.strip(), token):
        return RefusalReason.BAD_TOKEN, "invalid bearer token"
    return None
