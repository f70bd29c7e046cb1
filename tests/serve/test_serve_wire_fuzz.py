"""Property tests over the wire models: any JSON value in any field either validates (and makes valid sampling
settings) or becomes a 4xx naming that field; never another exception."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from coglens.engine.errors import EngineInputError
from coglens.serve.errors import ServeError, to_serve_error
from coglens.serve.http import parse
from coglens.serve.openai.protocol import ChatCompletionRequest, CompletionRequest
from coglens.serve.tgi.protocol import TGIGenerateRequest
from coglens.serve.triton.protocol import InferRequest, TritonGenerateRequest
from coglens.serve.vllm.protocol import VLLMGenerateRequest

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)

# model, a valid body, and the dotted prefix of the fields that sit in a nested object
CASES: list[tuple[type[BaseModel], dict[str, Any], str | None]] = [
    (ChatCompletionRequest, {"messages": [{"role": "user", "content": "hi"}]}, None),
    (CompletionRequest, {"prompt": "hi"}, None),
    (TGIGenerateRequest, {"inputs": "hi", "parameters": {}}, "parameters"),
    (VLLMGenerateRequest, {"prompt": "hi"}, None),
    (TritonGenerateRequest, {"text_input": "hi", "parameters": {}}, "parameters"),
    (InferRequest, {"inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]},
     "parameters"),
]


def _fields(model: type[BaseModel], nested: str | None) -> list[str]:
    names = list(model.model_fields)
    if nested is not None:
        inner = model.model_fields[nested].annotation
        names += [f"{nested}.{name}" for name in inner.model_fields]  # type: ignore[union-attr]
    return names + ["not_a_field", f"{nested}.not_a_field" if nested else "also_not_a_field"]


def _with(body: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    out = {**body, **{k: dict(v) for k, v in body.items() if isinstance(v, dict)}}
    *parents, name = dotted.split(".")
    target = out
    for parent in parents:
        target = target.setdefault(parent, {})
    target[name] = value
    return out


def _check(model: type[BaseModel], data: dict[str, Any], field: str) -> None:
    try:
        body = parse(model, data)
        to_params = getattr(body, "to_sampling_params", None)
        if to_params is not None:
            to_params(16)
        assert not field.endswith("not_a_field"), f"the unknown field {field} was accepted"
    except (ValidationError, ServeError, EngineInputError) as exc:
        error = to_serve_error(exc)
        assert 400 <= error.status_code < 500, error.message
        if isinstance(exc, ValidationError):
            assert error.param is not None and error.param.startswith(field.split(".")[0]), (error.param, field)
            assert error.message.startswith(error.param), error.message


@pytest.mark.parametrize(("model", "body", "nested"), CASES, ids=[case[0].__name__ for case in CASES])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_json_in_any_field_is_accepted_or_a_4xx_naming_it(model, body, nested, data):
    field = data.draw(st.sampled_from(_fields(model, nested)))
    value = data.draw(JSON)
    _check(model, _with(body, field, value), field)


@pytest.mark.parametrize(("model", "body", "nested"), CASES, ids=[case[0].__name__ for case in CASES])
def test_the_valid_bodies_are_valid(model, body, nested):
    parse(model, body)


@settings(max_examples=100, deadline=None)
@given(value=JSON)
def test_any_json_body_is_a_4xx_or_valid(value):
    for model, _, _ in CASES:
        try:
            parse(model, value)
        except (ValidationError, ServeError) as exc:
            assert 400 <= to_serve_error(exc).status_code < 500


def _number_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, bool]]:
    """(dotted name, is a float) of every int or float field, nested models included."""
    out = []
    for name, info in model.model_fields.items():
        annotation = str(info.annotation)
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            out += _number_fields(info.annotation, f"{prefix}{name}.")
        elif annotation in {"<class 'int'>", "<class 'float'>", "int | None", "float | None"}:
            out.append((prefix + name, "float" in annotation))
    return out


@pytest.mark.parametrize(("model", "body", "nested"), CASES, ids=[case[0].__name__ for case in CASES])
def test_number_fields_refuse_booleans_strings_and_nan(model, body, nested):
    fields = _number_fields(model)
    assert fields
    for field, is_float in fields:
        for value in (True, "1", float("nan")):
            with pytest.raises(ValidationError) as caught:
                parse(model, _with(body, field, value))
            error = to_serve_error(caught.value)
            assert error.param == field, (field, value, error.message)
            if is_float and value != value:  # NaN
                assert "is not a number" in error.message
