"""API keys at the door: the keys a server accepts (`ApiKeys`, read from `--api-key`,
`--api-key-file` or `TIDEFLOW_API_KEY`) and `AuthMiddleware`, which requires one of them as
`Authorization: Bearer <key>` on every `/v1` route.

Only paths under /v1 are guarded, as vLLM's `--api-key` guards them: /health and /metrics stay
open for probes and scrapers, and so do /tokenize, /detokenize, /version and /openapi.json.
A refusal is a 401 with an OpenAI error object (`code: "invalid_api_key"`) and
`WWW-Authenticate: Bearer`.

Keys are held only as SHA-256 digests, and a presented key's digest is compared with
`hmac.compare_digest` against every one of them, without stopping at a match: the time a
check takes says nothing about how close a guess came, nor about which key matched. Nothing
here logs or echoes a key, and errors about a key name where it came from, never the key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Iterable, Mapping

from tideflow.serve.errors import send_error, unauthorized

API_KEY_ENV = "TIDEFLOW_API_KEY"  # the key used when neither --api-key nor --api-key-file gives one
KEY_ID = "tideflow_key_id"  # scope["state"] key: the SHA-256 digest of the key that authenticated the request
GUARDED_PREFIX = "/v1"


def check_key(key, where: str) -> None:
    """ValueError naming `where` (never the key) unless `key` can travel in a bearer header:
    a non-empty string of visible ASCII, no spaces."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"{where}: an API key must be a non-empty string")
    if not all("!" <= ch <= "~" for ch in key):
        raise ValueError(f"{where}: an API key may hold only visible ASCII characters (no spaces)")


def read_key_file(path: str) -> tuple[str, ...]:
    """The keys of a key file: one per line; blank lines and lines starting with # are skipped,
    and whitespace around a key is dropped."""
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"api_key_file {path!r}: cannot read it ({type(exc).__name__})") from None
    keys = []
    for number, line in enumerate(lines, 1):
        key = line.strip()
        if key and not key.startswith("#"):
            check_key(key, f"api_key_file {path!r}, line {number}")
            keys.append(key)
    if not keys:
        raise ValueError(f"api_key_file {path!r} holds no keys")
    return tuple(keys)


def resolve_keys(keys: Iterable[str], key_file: str | None, environ: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    """Every key the server accepts: those given and those of `key_file`; when these are none,
    TIDEFLOW_API_KEY's (as vLLM reads VLLM_API_KEY only without --api-key, so a key left in a
    shell's environment does not widen an explicit list). Duplicates are dropped; () means no
    authentication."""
    found = list(keys)
    if key_file is not None:
        found += read_key_file(key_file)
    if not found and environ.get(API_KEY_ENV):
        key = environ[API_KEY_ENV].strip()
        check_key(key, API_KEY_ENV)
        found.append(key)
    return tuple(dict.fromkeys(found))


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class ApiKeys:
    """The keys a server accepts, as digests."""

    def __init__(self, keys: Iterable[str]):
        self._digests = tuple(_digest(k) for k in keys)

    def __len__(self) -> int:
        return len(self._digests)

    def match(self, presented: str) -> bytes | None:
        """The digest of the accepted key equal to `presented` (the request's key id), or None."""
        given = _digest(presented)
        found = None
        for digest in self._digests:  # every one, whatever matched
            if hmac.compare_digest(given, digest):
                found = digest
        return found


class AuthMiddleware:
    """Wraps the app: requests to /v1 paths need a valid bearer key; the rest pass."""

    def __init__(self, app, keys: ApiKeys, on_refused: Callable[[], None]):
        self.app = app
        self.keys = keys
        self.on_refused = on_refused  # counts a refusal (the key is not passed on)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not _path(scope).startswith(GUARDED_PREFIX):
            return await self.app(scope, receive, send)
        presented = _bearer(scope)
        key_id = self.keys.match(presented) if presented is not None else None
        if key_id is None:
            self.on_refused()
            return await send_error(send, unauthorized(missing=presented is None))
        scope.setdefault("state", {})[KEY_ID] = key_id
        await self.app(scope, receive, send)


def _path(scope) -> str:
    """The path the app routes by: Serve puts the route prefix in root_path and keeps it in
    path, and Starlette drops it only where a "/" follows it (so does this)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):len(root) + 1] in ("/", ""):
        return path[len(root):]
    return path


def _bearer(scope) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (the scheme in any case), else None."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            token = token.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None
