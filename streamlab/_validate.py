"""Request validation of the mock model: one schema for the Chat Completions body, checked up front.

Every request body passes ``parse_body(raw)`` before any fault or token runs; what the mock cannot
answer correctly is an OpenAI-style JSON ``400`` here, never a 500, a traceback or a hang later::

    raw bytes --json (no NaN/Infinity, depth <= 64)--> dict --BODY schema--> checked body

The schema names only what the mock reads or what a client could get wrong in a way that matters;
unknown fields are ignored, as by most OpenAI-compatible servers. Limits live in ``streamlab._spec``.

    field                       rule
    model                       string (<= 256 characters), required
    messages                    non-empty array of {role, content}: role one of system, developer,
                                user, assistant, tool, function; content a string or an array of
                                parts ({"type": ..., "text": string for type "text"}); null or absent
                                only for an assistant message
    stream, logprobs,           boolean or null
      parallel_tool_calls
    stream_options              object or null; include_usage boolean or null
    max_tokens,                 integer 1 .. 100 000 or null
      max_completion_tokens
    n                           1 or null (the mock answers one choice)
    temperature / top_p         number 0 .. 2 / 0 .. 1
    presence_/frequency_penalty number -2 .. 2
    seed / top_logprobs         integer / integer 0 .. 20
    stop                        string or array of at most 4 strings
    tools                       array of at most 128 {type: "function", function: {name (1..64 of
                                A-Z a-z 0-9 _ -), description?: string, parameters?: object}}
    tool_choice                 "none", "auto", "required" or {type: "function", function: {name}}
                                naming one of ``tools``
    user / response_format,     string / object
      logit_bias, metadata
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable

from . import _spec
from ._spec import MAX_JSON_DEPTH, MAX_MESSAGE, MAX_STOP, MAX_TOKENS, MAX_TOOLS

__all__ = ["RequestError", "error_body", "content_text", "parse_body", "BODY"]


class RequestError(Exception):
    """Bad input: becomes an OpenAI-style JSON error."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> bytes:
    """``{"error": {"message", "type", "param", "code"}}``; the message is cut to MAX_MESSAGE characters."""
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + "... (cut)"
    if param is not None and len(param) > 200:
        param = param[:200]
    return json.dumps({"error": {"message": message, "type": type, "param": param, "code": code}}).encode()


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


# -- the schema -------------------------------------------------------------------------------------
Rule = Callable[[Any, str], None]  # (value, param) -> None, or raise RequestError

_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
               dict: "an object", type(None): "null"}


def _got(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _bad_type(param: str, expected: str, value: Any) -> RequestError:
    return RequestError(400, f"Invalid type for '{param}': expected {expected}, but got {_got(value)} instead.",
                        param=param, code="invalid_type")


def _bad_value(param: str, message: str, code: str = "invalid_value") -> RequestError:
    return RequestError(400, f"Invalid '{param}': {message}", param=param, code=code)


def nullable(rule: Rule) -> Rule:
    def check(value: Any, param: str) -> None:
        if value is not None:
            rule(value, param)
    check.what = getattr(rule, "what", "a value") + " or null"  # type: ignore[attr-defined]
    return check


def boolean() -> Rule:
    def check(value: Any, param: str) -> None:
        if not isinstance(value, bool):
            raise _bad_type(param, "a boolean", value)
    check.what = "a boolean"  # type: ignore[attr-defined]
    return check


def integer(low: int, high: int, *, positive: bool = False, code: str = "invalid_value", note: str = "") -> Rule:
    def check(value: Any, param: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad_type(param, "a positive integer" if positive else "an integer", value)
        if positive and value < 1:
            raise RequestError(400, f"Invalid '{param}': expected a positive integer, got {value}.",
                               param=param, code="invalid_type")
        if not low <= value <= high:
            raise _bad_value(param, note or f"expected an integer from {low} to {high}, got {_spec.echo(value, 40)}.",
                             code)
    check.what = "an integer"  # type: ignore[attr-defined]
    return check


def number(low: float, high: float) -> Rule:
    def check(value: Any, param: str) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad_type(param, "a number", value)
        if not (math.isfinite(value) and low <= value <= high):
            raise _bad_value(param, f"expected a number from {low:g} to {high:g}, got {_spec.echo(value, 40)}.")
    check.what = "a number"  # type: ignore[attr-defined]
    return check


def string(max_len: int | None = None, choices: tuple[str, ...] = ()) -> Rule:
    def check(value: Any, param: str) -> None:
        if not isinstance(value, str):
            raise _bad_type(param, "a string", value)
        if choices and value not in choices:
            raise _bad_value(param, f"expected one of {', '.join(map(repr, choices))}, got {_spec.echo(value)}.")
        if max_len is not None and len(value) > max_len:
            raise _bad_value(param, f"expected a string of at most {max_len} characters, got {len(value)}.")
    check.what = "a string"  # type: ignore[attr-defined]
    return check


def name() -> Rule:
    def check(value: Any, param: str) -> None:
        try:
            _spec.check_name(value, f"'{param}'")
        except _spec.SpecError as exc:
            raise _bad_value(param, str(exc) + ".") from None
    check.what = "a name"  # type: ignore[attr-defined]
    return check


def array(item: Rule | None = None, *, max_items: int | None = None) -> Rule:
    def check(value: Any, param: str) -> None:
        if not isinstance(value, list):
            raise _bad_type(param, "an array", value)
        if max_items is not None and len(value) > max_items:
            raise _bad_value(param, f"expected an array of at most {max_items} items, got {len(value)}.",
                             "array_above_max_length")
        if item is not None:
            for i, v in enumerate(value):
                item(v, f"{param}[{i}]")
    check.what = "an array"  # type: ignore[attr-defined]
    return check


def obj(fields: dict[str, Rule] | None = None, *, required: tuple[str, ...] = (), values: Rule | None = None) -> Rule:
    def check(value: Any, param: str) -> None:
        if not isinstance(value, dict):
            raise _bad_type(param, "an object", value)
        for key in required:
            if key not in value:
                raise RequestError(400, f"Missing required parameter: '{param}.{key}'.", param=f"{param}.{key}",
                                   code="missing_required_parameter")
        for key, rule in (fields or {}).items():
            if key in value:
                rule(value[key], f"{param}.{key}")
        if values is not None:
            for key, v in value.items():
                values(v, f"{param}.{_spec.echo(key, 40)}")
    check.what = "an object"  # type: ignore[attr-defined]
    return check


def one_of(*rules: Rule) -> Rule:
    what = " or ".join(getattr(r, "what", "a value") for r in rules)

    def check(value: Any, param: str) -> None:
        errors = []
        for rule in rules:
            try:
                rule(value, param)
                return
            except RequestError as err:
                errors.append(err)
        typed = [e for e in errors if e.code != "invalid_type"]
        if typed:  # the value had a right type but a wrong content: say that
            raise typed[0]
        raise _bad_type(param, what, value)
    check.what = what  # type: ignore[attr-defined]
    return check


_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_PART = obj({"type": string(), "text": string()}, required=("type",))


def _text_part(value: Any, param: str) -> None:
    _PART(value, param)
    if value["type"] == "text" and not isinstance(value.get("text"), str):
        raise _bad_type(f"{param}.text", "a string", value.get("text"))


_CONTENT = one_of(string(), array(_text_part))
_MESSAGE_FIELDS = {"role": string(choices=_ROLES), "name": string(), "tool_call_id": string(),
                   "tool_calls": array(obj())}


def _messages(value: Any, param: str) -> None:
    if not isinstance(value, list) or not value:
        raise RequestError(400, "'messages' must be a non-empty array.", param=param, code="invalid_type")
    for i, message in enumerate(value):
        where = f"{param}[{i}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError(400, f"{where} must be an object with a 'role'.", param=where, code="invalid_type")
        for key, rule in _MESSAGE_FIELDS.items():
            if key in message:
                rule(message[key], f"{where}.{key}")
        content = message.get("content")
        if content is None and message["role"] == "assistant":
            continue
        if content is None:
            if "content" not in message:
                raise RequestError(400, f"Missing required parameter: '{where}.content'.", param=f"{where}.content",
                                   code="missing_required_parameter")
            raise _bad_type(f"{where}.content", "a string or an array of content parts", content)
        _CONTENT(content, f"{where}.content")


_messages.what = "an array"  # type: ignore[attr-defined]

_PARAMETERS = obj({"properties": obj(values=obj()), "required": array(string())})
_TOOL = obj({"type": string(choices=("function",)),
             "function": obj({"name": name(), "description": string(), "parameters": _PARAMETERS,
                              "strict": nullable(boolean())}, required=("name",))},
            required=("function",))
_TOOL_CHOICE = one_of(string(choices=("none", "auto", "required")),
                      obj({"type": string(choices=("function",)), "function": obj({"name": name()},
                                                                                   required=("name",))},
                          required=("function",)))
_MAX_TOKENS = nullable(integer(1, MAX_TOKENS, positive=True))

BODY: dict[str, Rule] = {
    "model": string(max_len=256),
    "messages": _messages,
    "stream": nullable(boolean()),
    "stream_options": nullable(obj({"include_usage": nullable(boolean())})),
    "max_tokens": _MAX_TOKENS,
    "max_completion_tokens": _MAX_TOKENS,
    "n": nullable(integer(1, 1, code="unsupported_value",
                          note="the streamlab mock answers one choice; n must be 1 (or absent).")),
    "temperature": nullable(number(0, 2)),
    "top_p": nullable(number(0, 1)),
    "presence_penalty": nullable(number(-2, 2)),
    "frequency_penalty": nullable(number(-2, 2)),
    "seed": nullable(integer(-(2**63), 2**63 - 1)),
    "logprobs": nullable(boolean()),
    "top_logprobs": nullable(integer(0, 20)),
    "stop": nullable(one_of(string(max_len=1000), array(string(max_len=1000), max_items=MAX_STOP))),
    "user": string(max_len=1000),
    "parallel_tool_calls": nullable(boolean()),
    "response_format": nullable(obj({"type": string()})),
    "logit_bias": nullable(obj(values=number(-100, 100))),
    "metadata": nullable(obj(values=string())),
    "tools": nullable(array(_TOOL, max_items=MAX_TOOLS)),
    "tool_choice": nullable(_TOOL_CHOICE),
}


# -- parsing ----------------------------------------------------------------------------------------
def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _too_deep(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


_BAD_JSON = ("We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
             "HTTP library correctly. The OpenAI API expects a JSON payload.)")


def parse_body(raw: bytes) -> dict:
    """Parse and check a chat completion request body; raise ``RequestError`` (400) on anything wrong."""
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise RequestError(400, f"The JSON body is nested deeper than {MAX_JSON_DEPTH} levels.",
                           code="invalid_json") from None
    except (ValueError, UnicodeDecodeError):
        raise RequestError(400, _BAD_JSON, code="invalid_json") from None
    if not isinstance(body, dict):
        raise RequestError(400, "The request body must be a JSON object.")
    if _too_deep(body, MAX_JSON_DEPTH):
        raise RequestError(400, f"The JSON body is nested deeper than {MAX_JSON_DEPTH} levels.", code="invalid_json")
    if "model" not in body:
        raise RequestError(400, "you must provide a model parameter", param="model",
                           code="missing_required_parameter")
    if "messages" not in body or body["messages"] is None:
        raise RequestError(400, "Missing required parameter: 'messages'.", param="messages",
                           code="missing_required_parameter")
    for key, rule in BODY.items():
        if key in body:
            rule(body[key], key)
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        wanted = choice["function"]["name"]
        if wanted not in [t["function"]["name"] for t in body.get("tools") or []]:
            raise _bad_value("tool_choice", f"function {_spec.echo(wanted)} is not in 'tools'.")
    return body
