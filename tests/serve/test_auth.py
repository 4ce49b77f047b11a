"""API keys (issue 21): no key, a wrong key and a right key give 401, 401, 200 on every /v1
route of a Ray-free stand-in server; /health, /metrics and the routes outside /v1 stay open;
keys come from flags, a file or TIDEFLOW_API_KEY and never reach a log, a repr or a reply."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.serve.stand_in import ask, call, stand_in_server
from tideflow.serve.auth import API_KEY_ENV, ApiKeys, resolve_keys
from tideflow.serve.config import ServeConfig
from tideflow.serve.server import build_asgi_app

KEYS = ("sk-alpha-0123", "sk-beta-4567")
WRONG = "sk-gamma-8910"
GOOD = {"prompt": "def fibonacci(n):", "max_tokens": 2, "temperature": 0}
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}


@pytest.fixture(scope="module")
def app(tiny_model_dir):
    config = ServeConfig(api_keys=KEYS)
    return build_asgi_app(stand_in_server(tiny_model_dir("llama"), config, dtype="float32"))


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _routes(model: str):
    """Every /v1 route: (method, path, body)."""
    return [("POST", "/v1/completions", GOOD), ("POST", "/v1/chat/completions", CHAT),
            ("POST", "/v1/embeddings", {"input": "hi"}), ("GET", "/v1/models", None),
            ("GET", f"/v1/models/{model}", None)]


# (Authorization header, expected status)
ATTEMPTS = [(None, 401), (_bearer(WRONG), 401), ({"Authorization": f"Basic {KEYS[0]}"}, 401), (_bearer(KEYS[0]), 200),
            ({"authorization": f"bearer {KEYS[1]}"}, 200)]


def test_every_v1_route_needs_a_right_key(app):
    async def go():
        return [(method, path, headers, expected, await ask(app, method, path, body, headers=headers))
                for method, path, body in _routes("llama") for headers, expected in ATTEMPTS]

    failures = []
    for method, path, headers, expected, reply in asyncio.run(go()):
        where = f"{method} {path} with {headers}: {reply.status} {reply.body}"
        if reply.status != expected:
            failures.append(where)
        elif expected == 401:
            error = reply.body["error"]
            if (error["code"], error["type"], error["param"]) != ("invalid_api_key", "invalid_request_error", None):
                failures.append(where)
            if reply.headers.get("www-authenticate") != "Bearer":
                failures.append(f"{where}: no WWW-Authenticate: Bearer")
    assert not failures, "\n".join(failures)


def test_a_missing_key_and_a_wrong_one_are_told_apart_and_neither_is_echoed(app):
    status, missing = call(app, "POST", "/v1/completions", GOOD)
    assert status == 401 and "didn't provide" in missing["error"]["message"]
    status, wrong = call(app, "POST", "/v1/completions", GOOD, headers=_bearer(WRONG))
    assert status == 401 and wrong["error"]["message"] == "Incorrect API key provided."
    assert WRONG not in str(wrong) and "sk-" not in str(wrong)


def test_health_metrics_and_the_routes_outside_v1_stay_open(app):
    for method, path, body in [("GET", "/health", None), ("GET", "/metrics", None), ("GET", "/version", None),
                               ("GET", "/openapi.json", None), ("POST", "/tokenize", {"prompt": "hi"}),
                               ("POST", "/detokenize", {"tokens": [5, 6]})]:
        status, answer = call(app, method, path, body)
        assert status == 200, (path, answer)


def test_refusals_are_counted(app):
    def refused() -> float:
        text = call(app, "GET", "/metrics")[1]
        line = next(l for l in text.splitlines() if l.startswith("tideflow:request_unauthorized_total"))
        return float(line.rsplit(" ", 1)[1])

    before = refused()
    call(app, "GET", "/v1/models")
    call(app, "GET", "/v1/models", headers=_bearer(WRONG))
    call(app, "GET", "/v1/models", headers=_bearer(KEYS[0]))
    assert refused() == before + 2


def test_the_route_prefix_is_not_a_way_around(app):
    """Serve keeps its route prefix in `path` and names it in `root_path`: /keyed/v1 is guarded."""

    async def go():
        return [await ask(app, "GET", "/keyed/v1/models", root_path="/keyed"),
                await ask(app, "GET", "/keyed/v1/models", headers=_bearer(KEYS[1]), root_path="/keyed"),
                await ask(app, "GET", "/keyed/health", root_path="/keyed")]

    no_key, keyed, health = asyncio.run(go())
    assert (no_key.status, keyed.status, health.status) == (401, 200, 200)


def test_keys_never_reach_a_log_or_a_repr(app, caplog, tiny_model_dir):
    with caplog.at_level(logging.DEBUG):
        call(app, "POST", "/v1/completions", GOOD, headers=_bearer(WRONG))
        call(app, "POST", "/v1/completions", GOOD, headers=_bearer(KEYS[0]))
        with pytest.raises(ValueError) as bad_key:
            ServeConfig(api_keys=("sk-ok", "sk with space"))
    assert not any(k in caplog.text for k in (*KEYS, WRONG))
    assert "api_keys[1]" in str(bad_key.value) and "sk with space" not in str(bad_key.value)
    config = ServeConfig(model=tiny_model_dir("llama"), api_keys=KEYS)
    assert not any(k in repr(config) or k in repr(config.resolved()) for k in KEYS)


def test_keys_come_from_flags_a_file_or_the_environment(tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text("# team keys\nsk-file-1\n\n   sk-file-2  \nsk-flag\n")
    env = {API_KEY_ENV: "sk-env"}
    assert resolve_keys(("sk-flag",), str(path), env) == ("sk-flag", "sk-file-1", "sk-file-2")
    assert resolve_keys((), None, env) == ("sk-env",)  # only when nothing else gives a key
    assert resolve_keys(("sk-flag",), None, env) == ("sk-flag",)
    assert resolve_keys((), None, {}) == ()  # no authentication
    bad = tmp_path / "bad.txt"
    bad.write_text("sk-good\nsk two words\n")
    with pytest.raises(ValueError, match="line 2") as error:
        resolve_keys((), str(bad), {})
    assert "two words" not in str(error.value)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ValueError, match="holds no keys"):
        resolve_keys((), str(empty), {})
    with pytest.raises(ValueError, match="cannot read"):
        resolve_keys((), str(tmp_path / "missing.txt"), {})
    with pytest.raises(ValueError, match=API_KEY_ENV):
        resolve_keys((), None, {API_KEY_ENV: "sk bad"})


def test_resolved_config_holds_the_file_keys_and_forgets_the_file(tiny_model_dir, tmp_path, monkeypatch):
    path = tmp_path / "keys.txt"
    path.write_text("sk-from-file\n")
    monkeypatch.setenv(API_KEY_ENV, "sk-from-env")
    config = ServeConfig.from_args({"model": tiny_model_dir("llama"), "api_keys": ["sk-given"],
                                    "api_key_file": str(path)}).resolved()
    assert (config.api_keys, config.api_key_file) == (("sk-given", "sk-from-file"), None)
    assert config.resolved().api_keys == config.api_keys  # resolving again changes nothing
    assert ServeConfig(model=tiny_model_dir("llama")).resolved().api_keys == ("sk-from-env",)
    assert ServeConfig.from_args({"api_keys": "sk-one"}).api_keys == ("sk-one",)  # `serve run ... api_keys=KEY`
    with pytest.raises(ValueError, match="api_keys must be a list"):
        ServeConfig(api_keys=42)


def test_a_key_matches_only_itself():
    keys = ApiKeys(KEYS)
    assert keys.match(KEYS[0]) != keys.match(KEYS[1]) and keys.match(KEYS[0]) is not None
    for near in (KEYS[0][:-1], KEYS[0] + "x", KEYS[0].upper(), "", " " + KEYS[0]):
        assert keys.match(near) is None
    assert len(ApiKeys(())) == 0
