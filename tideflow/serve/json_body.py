"""Reading a request's JSON body: `Content-Type: application/json`, valid JSON without NaN or
Infinity, an object at the top, and nested at most `MAX_DEPTH` levels.

The depth bound keeps every later step (pydantic, the schema and grammar compilers, the chat
template) far from Python's recursion limit: a body nested thousands deep was a 500
(RecursionError) before it. No real request comes near it: a JSON schema 40 objects deep sits
at about 85 levels of the body.
"""

from __future__ import annotations

import json

from tideflow.serve.errors import bad_request

MAX_DEPTH = 100  # levels of objects and arrays, the body itself being level 1
_SCALARS = frozenset({str, int, float, bool, type(None)})


async def read_json(request) -> dict:
    """The body of a Starlette request as a dict, or a 400 naming what is wrong with it."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise bad_request(f"Content-Type must be application/json, got {ctype or 'none'!r}", None,
                          code="invalid_content_type")
    raw = await request.body()
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        body = None
        too_deep = True
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}", None, code="invalid_json") from None
    else:
        too_deep = nested_deeper(body, MAX_DEPTH)
    if too_deep:
        raise bad_request(f"the request body nests objects and arrays more than {MAX_DEPTH} levels deep", None,
                          code="invalid_json")
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(body).__name__}", None,
                          code="invalid_json")
    return body


def nested_deeper(value, limit: int) -> bool:
    """Whether parsed JSON nests objects and arrays more than `limit` levels. Iterative, and a
    list of scalars (a prompt of token ids) is passed over at C speed."""
    if not isinstance(value, (dict, list)):
        return False
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            children = node.values()
        elif _SCALARS.issuperset(map(type, node)):
            continue
        else:
            children = node
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")
