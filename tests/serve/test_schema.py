"""/openapi.json describes what the server does, checked by hand and then fuzzed with schemathesis.

The fuzzing runs in-process (ASGI transport) against apps with tight limits, with and without a token, so the
guarded and the limited paths are exercised too; examples are derandomized and bounded (seconds, not minutes).
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from schemathesis.engine import Status, StopReason, events, from_schema
from tests.serve.servetools import image_bytes, upload

from realfake.detector import Detector
from realfake.serve.app import NO_FILES, create_app

TOKEN = "fuzz-token"


@schemathesis.check
def valid_requests_pass_validation(ctx: Any, response: Any, case: Any) -> bool | None:
    """A schema-valid request is never refused by the server's own request validation.

    415 and 422 are this API's answers to schema-valid bytes that are not a readable image, so the tests allow
    them; but a 422 from validation ("invalid request: ...") means /openapi.json promised something the server
    refuses. Allowing every 422 hid that: the hidden `explain` form field was documented as boolean-or-null,
    and its null was refused.
    """
    if case.meta is None or not case.meta.generation.mode.is_positive or response.status_code != 422:
        return None
    detail = response.json().get("detail", "")
    if detail.startswith("invalid request") or detail == NO_FILES:
        raise AssertionError(f"schema-valid request refused by validation: {detail}")
    return None


@pytest.fixture(scope="module")
def app(detector: Detector) -> FastAPI:
    return create_app(detector, token=TOKEN, max_images=4, max_upload_bytes=200_000, body_timeout_s=5)


def error_responses(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        f"{method.upper()} {path} {status}": response
        for path, item in schema["paths"].items()
        for method, op in item.items()
        for status, response in op["responses"].items()
        if not status.startswith("2")
    }


def test_files_are_required_and_every_error_is_one_string(app: FastAPI) -> None:
    schema = TestClient(app).get("/openapi.json").json()
    body = schema["paths"]["/v1/predict"]["post"]["requestBody"]
    assert body["required"] is True
    form = schema["components"]["schemas"][body["content"]["multipart/form-data"]["schema"]["$ref"].split("/")[-1]]
    assert "files" in form["required"]
    assert (form["properties"]["files"]["minItems"], form["properties"]["files"]["maxItems"]) == (1, 4)
    errors = error_responses(schema)
    statuses = {key.split()[-1] for key in errors if "/v1/predict" in key}
    assert statuses == {"400", "401", "408", "413", "415", "422", "501", "503"}
    assert set(form["properties"]) == {"files"}  # nothing the route reads but does not promise to accept
    retry = schema["paths"]["/v1/predict"]["post"]["responses"]["503"]["headers"]["Retry-After"]
    assert retry["schema"] == {"type": "integer", "minimum": 1}
    for key, response in errors.items():
        assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}, key
    assert schema["components"]["schemas"]["ErrorBody"]["properties"]["detail"]["type"] == "string"
    assert "HTTPValidationError" not in schema["components"]["schemas"]


def test_model_info_documents_the_summary_figures(app: FastAPI) -> None:
    """/v1/model's figures are served as the summary types themselves; their field descriptions and enums still
    reach /openapi.json, and the sentence, served once as `summary`, is not promised again among them."""
    schemas = TestClient(app).get("/openapi.json").json()["components"]["schemas"]

    def named(prop: dict[str, Any]) -> dict[str, Any]:
        """The component a property refers to (directly, as a list's items, or as the non-null choice)."""
        for choice in [prop, prop.get("items", {}), *prop.get("anyOf", []), *prop.get("allOf", [])]:
            if "$ref" in choice:
                return schemas[choice["$ref"].split("/")[-1]]
            if "$ref" in choice.get("items", {}):
                return schemas[choice["items"]["$ref"].split("/")[-1]]
        raise AssertionError(f"no reference in {prop}")

    figures = named(schemas["ModelInfo"]["properties"]["summary_figures"])
    assert "text" not in figures["properties"]
    assert "held-out source" in figures["properties"]["test_accuracy"]["description"]
    measured = named(figures["properties"]["measured"])
    assert "FAKE images labelled REAL" in measured["properties"]["fakes_called_real"]["description"]
    assert measured["properties"]["kind"]["enum"] == ["other data", "held-out source", "adapted on", "training data"]
    shares = named(measured["properties"]["labels"])
    assert shares["properties"]["true_class"]["enum"] == ["REAL", "FAKE"]
    assert shares["properties"]["uncertain"]["description"] == "share labelled 'uncertain', 0..1"
    assert "realfake adapt" in figures["properties"]["adapted_from"]["description"]
    ood, adaptation = named(measured["properties"]["ood"]), named(figures["properties"]["adapted_from"])
    for component in (figures, measured, shares, ood, adaptation):  # every field documented
        assert all(p.get("description") for p in component["properties"].values()), component["title"]


@pytest.mark.parametrize(
    ("params", "files", "needle"),
    [
        ({}, None, "no files"),
        ({"explain": "maybe"}, upload(("a.png", image_bytes((32, 32), "PNG", 50))), "explain"),
        ({}, {"files": (None, "not a file")}, "files"),
    ],
)
def test_validation_errors_are_one_line_strings(app: FastAPI, params: dict, files: Any, needle: str) -> None:
    """FastAPI's own validation answer is a list of objects; the schema (and the page) promise a string."""
    r = TestClient(app).post("/v1/predict", params=params, files=files, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and needle in detail


@pytest.mark.parametrize("token", [TOKEN, None], ids=["with-token", "open"])
def test_schemathesis_finds_nothing(detector: Detector, token: str | None) -> None:
    """Every phase (examples, coverage, fuzzing, stateful) and every check schemathesis has (server errors, status
    codes, content types, response schemas and headers, positive and negative data, missing or ignored auth,
    unsupported methods, ...) and `valid_requests_pass_validation` over generated requests, as `schemathesis
    run` does, with zero findings.

    Its pytest plugin's `from_fixture` does not run on pytest 9 (it sets `Function._nodeid`), so this drives
    schemathesis's own engine and collects what it reports.
    """
    app = create_app(detector, token=token, max_images=4, max_upload_bytes=200_000, body_timeout_s=5)
    config = schemathesis.Config.from_dict({
        "headers": {"Authorization": f"Bearer {token}"} if token else {},
        "generation": {"max-examples": 25, "deterministic": True, "database": "none"},
        "cache": {"enabled": False},  # nothing written into the repository (.schemathesis/)
        "checks": {
            # Schema-valid bytes need not be an image: 415 and 422 are this API's documented answer to them.
            "positive_data_acceptance": {"expected-statuses": ["2xx", "415", "422"]},
            # schemathesis's own list, and 413: more files than maxItems is refused with the documented 413 (too
            # many files) before any is read.
            "negative_data_rejection": {"expected-statuses": ["400", "401", "403", "404", "405", "406", "409", "413",
                                                              "415", "422", "428", "429", "5xx"]},
        },
    })
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    findings: list[str] = []
    scenarios = 0
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            scenarios += 1
            findings += [
                f"{event.recorder.label}: {check.name}: {info.failure.title}; reproduce: {info.code_sample}"
                if (info := check.failure_info) is not None else f"{event.recorder.label}: {check.name}"
                for checks in event.recorder.checks.values()
                for check in checks
                if check.status == Status.FAILURE
            ]
        elif isinstance(event, events.NonFatalError | events.FatalError):
            findings.append(f"error: {event.info.error if hasattr(event, 'info') else event}")
        elif isinstance(event, events.EngineFinished):
            findings += [str(f) for f in event.failures]
            assert event.stop_reason == StopReason.COMPLETED, event.stop_reason
    assert scenarios >= 3
    assert findings == []
