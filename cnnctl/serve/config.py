"""The settings of one `cnnctl serve` process, its one user-error type, and the auth rule."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from cnnctl.errors import UsageError

ENV = "CNNCTL_SERVE_CONFIG"  # how `--workers N` hands the settings to each worker process


@dataclass
class ServeConfig:
    model: str
    provider: str = "auto"
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_bytes: int = 10 << 20
    top_k: int = 5
    threads: int = 0
    name: str = ""  # the model's name on /v2/models/{name} (default: from the file's path)
    max_queue: int = 256  # images admitted and not yet answered; beyond it: 503 + Retry-After
    timeout_s: float = 30.0  # per request; beyond it: 504
    api_key_env: str = ""  # the environment variable holding the bearer token ("" = no auth)
    log_format: str = "text"  # "text" or "json": one line per request on stderr
    version: str = "1"  # the model's version on /v2/models/{name}/versions/{version} (a registered model's)
    registered: dict[str, str] | None = None  # a models:/ URI's registry record (track/registry.py)


class HTTPError(Exception):
    """A request the server refuses: one JSON line `{"error": ...}` with this status."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def api_key(cfg: ServeConfig) -> bytes | None:
    """The bearer token from $cfg.api_key_env (None without auth); a missing variable is a usage error."""
    if not cfg.api_key_env:
        return None
    value = os.environ.get(cfg.api_key_env, "")
    if len(value) < 16:
        raise UsageError(
            f"--api-key-env {cfg.api_key_env}: the variable is {'empty or unset' if not value else 'shorter than 16 characters'}; "
            f"export {cfg.api_key_env}=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return value.encode()


def check_exposure(cfg: ServeConfig, host: str, no_auth: bool) -> None:
    """Binding beyond loopback needs a key (--api-key-env) or an explicit --no-auth."""
    if cfg.api_key_env and no_auth:
        raise UsageError("--api-key-env and --no-auth contradict each other; give one")
    api_key(cfg)
    if not is_loopback(host) and not cfg.api_key_env and not no_auth:
        raise UsageError(
            f"--host {host} answers other machines: protect it with --api-key-env VAR (a bearer token), "
            "or say --no-auth if something in front of it authenticates"
        )
    if cfg.log_format not in ("text", "json"):
        raise UsageError(f"--log-format must be text or json, got {cfg.log_format!r}")
