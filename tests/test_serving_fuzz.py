"""HTTP fuzz suite (issue 16, suite b): every endpoint of the API fed random JSON shaped by its own OpenAPI
schema (right fields with wrong, extreme or surrogate-laden values, missing and extra fields) and raw bytes.
The property: never a 5xx, and every error body is JSON that names the field of a validation error.

CI runs a fixed seed and a few examples per endpoint; a long run: NOTELLM_FUZZ_EXAMPLES=2000 pytest -s this file
(the counts per endpoint are printed with -s).
"""

import json
import os
import string

import pytest
from fastapi.testclient import TestClient

hypothesis = pytest.importorskip("hypothesis", reason="pip package hypothesis is not installed")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from notellm.inference.generate import KnnTagger  # noqa: E402
from notellm.serving.app import create_app  # noqa: E402
from test_serving import RidgePopularity, world  # noqa: E402, F401  (the shared module fixture)

EXAMPLES = int(os.environ.get("NOTELLM_FUZZ_EXAMPLES", "12"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
TOKEN = "fuzz-token"
COUNTS: dict[str, dict[str, int]] = {}

# strings that broke servers before: lone surrogates, NUL, CJK, RTL, very long, path-like
NASTY = st.sampled_from(["\ud800", "a\udfffb", "\x00", "火锅🍲", "\u202e", "../../etc/passwd", "%2e%2e", " ",
                         "x" * 6000, "#", "[话题]", "null", "1e309"])
TEXT = st.one_of(st.text(max_size=30), st.text(st.characters(codec=None, categories=None), max_size=10), NASTY)
ANY_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
                        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
                        max_leaves=12)


def schema_strategy(schema: dict, spec: dict, depth: int = 0) -> st.SearchStrategy:
    """Values that follow `schema` most of the time and break it some of the time (type, range, size)."""
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    if "anyOf" in schema:
        return st.one_of([schema_strategy(s, spec, depth) for s in schema["anyOf"]])
    kind = schema.get("type")
    if depth > 4:
        return ANY_JSON
    if kind == "object":
        props = schema.get("properties", {})
        fields = {name: schema_strategy(sub, spec, depth + 1) for name, sub in props.items()}
        shaped = st.fixed_dictionaries({}, optional=fields)
        extra = st.dictionaries(TEXT, ANY_JSON, max_size=2)
        return st.one_of(shaped, shaped, st.builds(lambda a, b: {**b, **a}, shaped, extra), ANY_JSON)
    if kind == "array":
        item = schema_strategy(schema.get("items", {}), spec, depth + 1)
        top = schema.get("maxItems", 8) + 2
        return st.one_of(st.lists(item, max_size=min(top, 40)), ANY_JSON)
    if kind == "string":
        return st.one_of(TEXT, ANY_JSON)
    if kind in ("integer", "number"):
        lo, hi = schema.get("minimum", -10), schema.get("maximum", 10)
        return st.one_of(st.integers(lo - 2, hi + 2), st.integers(), st.floats(), TEXT)
    if kind == "boolean":
        return st.one_of(st.booleans(), ANY_JSON)
    return ANY_JSON


def body_bytes(value) -> bytes:
    """JSON with ASCII escapes, so lone surrogates travel as `\\ud800` the way a browser or curl sends them."""
    return json.dumps(value, ensure_ascii=True, allow_nan=True).encode()


def operations(app) -> list[tuple[str, str, dict]]:
    spec = app.openapi()
    return [(path, method.upper(), op) for path, methods in spec["paths"].items() for method, op in methods.items()]


@pytest.fixture(scope="module")
def fuzz_app(world, tmp_path_factory):  # noqa: F811
    app = create_app(index=world["index"], embedder=world["embedder"], notes=world["table"],
                     tagger=KnnTagger(world["rows"], k=10, n_tags=3), popularity=RidgePopularity(),
                     write_log=tmp_path_factory.mktemp("fuzz") / "writes.log", api_key=TOKEN)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield app, client


def check(response, where: str) -> None:
    assert response.status_code < 500, f"{where}: {response.status_code} {response.text[:300]}"
    if response.status_code >= 400 and response.headers.get("content-type", "").startswith("application/json"):
        body = response.json()  # an error body always decodes
        if response.status_code == 422 and isinstance(body.get("detail"), list):
            assert body["field"] and all(e["field"] for e in body["detail"])


def count(path: str, method: str, kind: str) -> None:
    COUNTS.setdefault(f"{method} {path}", {}).setdefault(kind, 0)
    COUNTS[f"{method} {path}"][kind] += 1


def raw_quote(value) -> str:
    """Percent-encoded bytes of any string, lone surrogates included (as a hostile client would send them)."""
    from urllib.parse import quote

    return quote(str(value).encode("utf-8", "surrogatepass"), safe="")


def fill_path(path: str, value: str) -> str:
    return path.replace("{note_id}", raw_quote(value) or "x")


def with_query(url: str, query: dict) -> str:
    return url + ("?" + "&".join(f"{raw_quote(k)}={raw_quote(v)}" for k, v in query.items()) if query else "")


def test_every_endpoint_answers_schema_guided_json_without_a_5xx(fuzz_app):
    app, client = fuzz_app
    spec = app.openapi()
    ops = operations(app)
    assert len(ops) >= 9  # reads, model endpoints and the writes
    for path, method, op in ops:
        body_schema = (op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema"))
        params = [p for p in op.get("parameters", []) if p["in"] == "query"]
        bodies = schema_strategy(body_schema, spec) if body_schema else st.none()
        queries = st.fixed_dictionaries({}, optional={p["name"]: st.one_of(TEXT, st.integers())
                                                      for p in params})

        @FUZZ
        @given(body=bodies, query=queries, note_id=TEXT)
        def one(body, query, note_id):
            url = fill_path(path, note_id)
            content = body_bytes(body) if body_schema else None
            headers = {"content-type": "application/json", "authorization": f"Bearer {TOKEN}"}
            response = client.request(method, with_query(url, query), content=content, headers=headers)
            check(response, f"{method} {url} {content!r:.200}")
            count(path, method, "json")

        one()
    print("\nfuzz inputs per endpoint:", json.dumps(COUNTS, indent=1))


def test_every_endpoint_answers_raw_bytes_without_a_5xx(fuzz_app):
    app, client = fuzz_app
    ops = [(p, m) for p, m, op in operations(app) if "requestBody" in op]
    content_types = st.sampled_from(["application/json", "text/plain", "application/json; charset=latin-1", ""])

    @settings(FUZZ, max_examples=3 * EXAMPLES)
    @given(op=st.sampled_from(ops), raw=st.one_of(st.binary(max_size=300),
                                                  st.text(string.printable, max_size=80).map(str.encode)),
           content_type=content_types)
    def one(op, raw, content_type):
        path, method = op
        response = client.request(method, fill_path(path, "0-0-0"), content=raw,
                                  headers={"content-type": content_type, "authorization": f"Bearer {TOKEN}"})
        check(response, f"{method} {path} {raw!r:.200}")
        count(path, method, "bytes")

    one()
    print("\nfuzz inputs per endpoint:", json.dumps(COUNTS, indent=1))


@pytest.mark.parametrize("raw", [b'{"note": {"title": "\\ud800"}}', b'{"note": {"title": "t", "\\udfff": 1}}',
                                 b'{"note": {"title": "t", "hashtags": ["\\ud800x"]}}',
                                 b'{"note": {"title": "t", "content": "ok\\udc00"}, "k": 3}'])
def test_a_lone_surrogate_anywhere_is_a_422_naming_the_field(fuzz_app, raw):
    _, client = fuzz_app
    for path in ("/popularity", "/similar", "/tags"):
        response = client.post(path, content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 422, response.text
        body = response.json()
        assert body["field"].startswith("note") and body["detail"][0]["msg"]
