"""The OpenAPI document (``GET /api/openapi.json``, kept in chatapp/web/openapi.json): served, well
formed OpenAPI 3.1, and the app's routes exactly, so a route added without describing it fails here."""

import json
import re

import pytest

from tests.helpers import ROOT

DOCUMENT_FILE = ROOT / "chatapp/web/openapi.json"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
SCHEMA_TYPES = {"null", "boolean", "object", "array", "number", "string", "integer"}
# A value for each path variable, for requests made without signing in.
SAMPLES = {"room": "general", "user": "bob", "name": "bob", "message": "1-0"}


@pytest.fixture(scope="module")
def document():
    return json.loads(DOCUMENT_FILE.read_text())


def openapi_path(rule):
    """A Flask rule as an OpenAPI path: ``/api/rooms/<room>`` is ``/api/rooms/{room}``."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)


def routes(app):
    """``{(METHOD, path)}`` of every rule of the URL map but the static files."""
    return {(method, openapi_path(rule)) for rule in app.url_map.iter_rules() if rule.endpoint != "static"
            for method in rule.methods - {"HEAD", "OPTIONS"}}


def operations(document):
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def resolve(document, node):
    """``node``, or what its ``$ref`` (a JSON pointer into this document) points at."""
    while isinstance(node, dict) and "$ref" in node:
        assert node["$ref"].startswith("#/"), node["$ref"]
        target = document
        for escaped in node["$ref"][2:].split("/"):
            part = escaped.replace("~1", "/").replace("~0", "~")
            assert part in target, f"unresolved $ref {node['$ref']}"
            target = target[part]
        node = target
    return node


def test_the_document_is_served_without_signing_in_and_revalidated(client):
    response = client.get("/api/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.json == json.loads(DOCUMENT_FILE.read_text())
    again = client.get("/api/openapi.json", headers={"If-None-Match": response.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""


def test_every_route_of_the_url_map_is_in_the_openapi_document(app, document):
    """The test the document exists for: a route added later fails here until it is described."""
    documented = {(method.upper(), path) for path, method, _ in operations(document)}
    missing = sorted(routes(app) - documented)
    assert missing == [], f"routes missing from chatapp/web/openapi.json: {missing}"


def test_every_operation_in_the_document_is_a_route(app, document):
    documented = {(method.upper(), path) for path, method, _ in operations(document)}
    assert sorted(documented - routes(app)) == []


def test_every_operation_has_a_summary_responses_and_an_id(document):
    ids = []
    for path, method, operation in operations(document):
        where = f"{method.upper()} {path}"
        assert isinstance(operation.get("summary"), str) and operation["summary"].strip(), where
        assert isinstance(operation.get("description"), str) and operation["description"].strip(), where
        assert operation.get("responses"), where
        assert any(re.fullmatch(r"2\d\d", status) for status in operation["responses"]), where
        ids.append(operation["operationId"])
    assert len(ids) == len(set(ids)), "operationIds must be unique"


def test_the_document_is_well_formed_openapi_3_1(document):
    """What openapi-spec-validator would check first, without adding it: the top-level fields, every
    ``$ref`` resolving, path templates and their parameters, responses, security names, schema types."""
    assert re.fullmatch(r"3\.1\.\d+", document["openapi"])
    assert document["info"]["title"] and isinstance(document["info"]["version"], str)
    assert set(document) <= {"openapi", "info", "jsonSchemaDialect", "servers", "paths", "webhooks", "components",
                             "security", "tags", "externalDocs"}
    schemes = document["components"]["securitySchemes"]
    for scheme in schemes.values():
        assert scheme["type"] in {"apiKey", "http", "mutualTLS", "oauth2", "openIdConnect"}
        if scheme["type"] == "apiKey":
            assert scheme["in"] in {"query", "header", "cookie"} and scheme["name"]
    every_ref_resolves(document, document)
    for name, schema in document["components"]["schemas"].items():
        check_schema_types(schema, (name,))
    for path, method, operation in operations(document):
        where = f"{method.upper()} {path}"
        assert path.startswith("/"), where
        check_parameters(document, path, operation, where)
        for status, response in operation["responses"].items():
            assert re.fullmatch(r"[1-5](\d\d|XX)|default", status), (where, status)
            assert isinstance(resolve(document, response)["description"], str), (where, status)
        if "requestBody" in operation:
            assert resolve(document, operation["requestBody"])["content"], where
        for part in [operation.get("requestBody", {}), *operation["responses"].values()]:
            for media in resolve(document, part).get("content", {}).values():
                check_schema_types(media.get("schema"), (where,))
        for requirement in operation.get("security", document.get("security", [])):
            assert set(requirement) <= set(schemes), where


def check_parameters(document, path, operation, where):
    """Each parameter well formed and declared once; the path's are exactly its template's variables."""
    declared = set()
    for reference in [*document["paths"][path].get("parameters", []), *operation.get("parameters", [])]:
        parameter = resolve(document, reference)
        assert parameter["in"] in {"path", "query", "header", "cookie"} and parameter["name"], where
        assert "schema" in parameter or "content" in parameter, where
        assert (parameter["name"], parameter["in"]) not in declared, f"{where}: {parameter['name']} declared twice"
        declared.add((parameter["name"], parameter["in"]))
        check_schema_types(parameter.get("schema"), (where, parameter["name"]))
        if parameter["in"] == "path":
            assert parameter["required"] is True, where
    assert {name for name, kind in declared if kind == "path"} == set(re.findall(r"{([^{}]+)}", path)), where


def every_ref_resolves(document, node):
    if isinstance(node, dict):
        if "$ref" in node:
            resolve(document, node)
        for value in node.values():
            every_ref_resolves(document, value)
    elif isinstance(node, list):
        for value in node:
            every_ref_resolves(document, value)


def check_schema_types(schema, trail):
    """Every ``type`` keyword of a schema (not a property that happens to be named ``type``) is a JSON
    Schema type."""
    if not isinstance(schema, dict):
        return
    kinds = schema.get("type")
    if kinds is not None:
        assert set(kinds if isinstance(kinds, list) else [kinds]) <= SCHEMA_TYPES, trail
    for key in ("items", "not", "additionalProperties", "propertyNames"):
        check_schema_types(schema.get(key), (*trail, key))
    for key in ("oneOf", "anyOf", "allOf"):
        for index, sub in enumerate(schema.get(key, [])):
            check_schema_types(sub, (*trail, key, index))
    for name, sub in schema.get("properties", {}).items():
        check_schema_types(sub, (*trail, name))


def test_the_routes_that_need_a_sign_in_are_described_so(app, document):
    """Asked without credentials, a route answers 401 exactly when the document says it needs them
    (no anonymous alternative in its ``security``) and lists the 401."""
    client = app.test_client()
    for path, method, operation in operations(document):
        url = re.sub(r"{([^{}]+)}", lambda m: SAMPLES[m[1]], path)
        response = client.open(url, method=method.upper(), json={} if method != "get" else None)
        try:
            anonymous_ok = {} in operation["security"]
            if response.status_code == 401:
                assert "401" in operation["responses"], (method, path)
            if response.status_code == 401 and response.json["error"] == "unauthorized":
                assert not anonymous_ok, (method, path)
            if not anonymous_ok:
                assert response.status_code == 401, (method, path, response.status_code)
        finally:
            response.close()


def design_codes():
    """The error codes and stream end reasons docs/DESIGN.md's wire contract names."""
    text = (ROOT / "docs/DESIGN.md").read_text()
    errors = text.split("**Errors** are JSON", 1)[1].split("\n\n", 1)[0]
    reasons = text.split("Stream end reasons:", 1)[1].split("\n\n", 1)[0]
    return set(re.findall(r"`([a-z_]+)`", errors + reasons))


def test_every_error_code_in_the_document_is_one_the_design_names(document):
    named = design_codes()
    assert {"unknown_room", "csrf_failed", "storage_full", "logged_out"} <= named
    for path, method, operation in operations(document):
        for status, reference in operation["responses"].items():
            if status == "414":  # gunicorn's (or nginx's) own page, before the app: no JSON, no code
                assert "text/html" in resolve(document, reference)["content"]
                continue
            if status.startswith(("4", "5")):
                response = resolve(document, reference)
                assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
                codes = response["x-error-codes"]
                assert codes and set(codes) <= named, (method, path, status, sorted(set(codes) - named))
                for code in codes:
                    assert f"`{code}`" in response["description"], (method, path, status, code)
