"""Fuzzing the service through its OWN OpenAPI document (schemathesis 4.x + Hypothesis), on the real Serve app.

The schema is loaded from the running app (``/openapi.json``), so every route it publishes is fuzzed, and a route
added later without being fuzzed fails ``test_schema_lists_every_route``. Cases are generated per operation, in
both of schemathesis' modes (positive: bodies the schema allows; negative: bodies it forbids), a bounded number
per operation, derandomized (the same cases on every run), and sent over HTTP to 127.0.0.1. Every response must:

* never be a 5xx;
* for a 4xx: carry Jina's error body, a JSON object with string ``code`` (a documented code), ``detail`` and a
  non-empty ``request_id`` (equal to the ``X-Request-ID`` header);
* for a 2xx: conform to the response schema the app itself publishes (schemathesis' ``response_schema_conformance``).

Twice: against the session's app in anonymous mode, and against a second app with keys required, with valid keys
(admin and not), with no key and with Hypothesis-generated ``Authorization`` headers (401 with the body on every
``/v1/*`` route, the code the header deserves). Generated model names and classifier ids are mostly replaced by
real ones (``steer``) so that cases get past the first check. A raw run adds what schemathesis does not generate
(other methods, unknown paths, content types, arbitrary bytes). Failures are collected (not raised per case, so
one run reports all of them without shrinking) and printed as curl commands with the response.

The service bugs this file found are fixed, and the tests at the end keep them fixed: the error bodies published
in /openapi.json (every 4xx/5xx documented with Jina's body), authentication before the body is read, and
INPUT_INVALID_JSON for a body that is not UTF-8; plus a learner bug in test_properties.py.
"""
from __future__ import annotations

import json
import time

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

pytestmark = pytest.mark.e2e

# Every route the service publishes (README, "API"). A new route must be added here, i.e. fuzzed.
OPERATIONS = [
    ("POST", "/v1/classify"),
    ("POST", "/v1/train"),
    ("POST", "/v1/embeddings"),
    ("GET", "/v1/classifiers"),
    ("POST", "/v1/classifiers"),
    ("DELETE", "/v1/classifiers/{classifier_id}"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model_id}"),
    ("GET", "/v1/stats"),
    ("GET", "/v1/usage"),
    ("GET", "/health"),
    ("GET", "/live"),
    ("GET", "/ready"),
]
OPEN_ROUTES = {"/health", "/live", "/ready"}  # no key needed, even when keys are required
EXAMPLES_PER_OPERATION = 40  # per operation and mode; Hypothesis stops earlier for operations with few inputs
AUTH_EXAMPLES = 20  # per operation, for the no-key / bad-key runs
RAW_EXAMPLES = 300  # random methods, paths, content types and bytes
TIMEOUT_S = 60

KEYS_APP, KEYS_PREFIX, KEYS_MODEL = "fuzz-keys", "/fuzzkeys", "all-MiniLM-L6-v2"
BIG = {"rpm": 100_000, "tpm": 100_000_000}


# -- running cases and checking responses ------------------------------------------------------------------------
class Fuzz:
    """Sends cases, applies the invariants, keeps counts and every failure (as a curl command and the response)."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        self.session = requests.Session()
        self.cases = self.requests = self.server_errors = 0
        self.failures: list[str] = []
        self.statuses: dict[str, dict[str, int]] = {}  # operation -> 'status code' -> count

    def send(self, case, headers: dict | None = None, *, expect: set[int] | None = None,
             expect_code: str | None = None):
        """One case: send it, check the invariants, record what went wrong. Returns the response (or None)."""
        self.cases += 1
        self.requests += 1
        try:
            response = case.call(base_url=self.base_url, session=self.session, headers=headers, timeout=TIMEOUT_S)
        except requests.RequestException as exc:  # a dropped connection or a timeout is as bad as a 5xx
            self.failures.append(f"{self._curl(case, headers)}\n  -> no response: {type(exc).__name__}: {exc}")
            return None
        self.record(f"{case.operation.method.upper()} {case.operation.path}", response)
        problems = self.problems(case, response, expect=expect, expect_code=expect_code)
        if problems:
            self.failures.append(
                f"{self._curl(case, headers)}\n  -> {response.status_code} {response.content[:600]!r}\n  "
                + "\n  ".join(problems)
            )
        return response

    def record(self, label: str, response) -> None:
        """Count the outcome ('status' or 'status code') per operation, for the printed report."""
        outcome = str(response.status_code)
        if response.status_code >= 400:
            try:
                outcome += " " + str(json.loads(response.content).get("code"))
            except (ValueError, AttributeError):
                pass
        by_status = self.statuses.setdefault(label, {})
        by_status[outcome] = by_status.get(outcome, 0) + 1

    def problems(self, case, response, *, expect=None, expect_code=None) -> list[str]:
        status, out = response.status_code, []
        if status >= 500:
            self.server_errors += 1
            out.append(f"a {status}: the service must never answer 5xx to a request it can refuse")
        if expect is not None and status not in expect:
            out.append(f"status {status}, expected one of {sorted(expect)}")
        if 400 <= status < 600:
            out += error_body_problems(response, expect_code)
        if 200 <= status < 600:
            from schemathesis.checks import response_schema_conformance
            from schemathesis.core.failures import FailureGroup

            try:
                case.validate_response(response, checks=[response_schema_conformance])
            except FailureGroup as exc:
                out.append(f"{status} body does not conform to the published schema: {str(exc)[:800]}")
        return out

    def _curl(self, case, headers) -> str:
        try:
            return case.as_curl_command(headers=headers, base_url=self.base_url)
        except Exception:  # noqa: BLE001 - a report must not fail on a case curl cannot express
            return repr(case)

    def report(self, reliability, what: str) -> None:
        reliability.add("fuzz cases tried", self.cases)
        reliability.add("requests sent", self.requests)
        reliability.add("5xx seen", self.server_errors)
        print(f"\n[{what}] {self.cases} cases, {self.requests} requests, {self.server_errors} 5xx, "
              f"{len(self.failures)} failures")
        for label, counts in sorted(self.statuses.items()):
            print(f"  {label:<42} {dict(sorted(counts.items()))}")

    def assert_clean(self) -> None:
        shown = "\n\n".join(self.failures[:15])
        assert not self.failures, f"{len(self.failures)} failing requests (first 15):\n\n{shown}"


def known_codes() -> set[str]:
    """Every error code the service documents: its typed errors' codes (classifiers/protocol/errors.py) and the ingress's own
    (README, "Errors")."""
    from classifiers.protocol import errors

    codes = {cls.code for cls in vars(errors).values()
             if isinstance(cls, type) and issubclass(cls, errors.ServiceError)}
    return codes | {errors.REQUEST_LIMIT, errors.TOKEN_LIMIT, "INPUT_INVALID_JSON", "INPUT_VALIDATION_FAILED",
                    "RESOURCE_NOT_FOUND", "METHOD_NOT_ALLOWED", "INPUT_TOO_LARGE"}


KNOWN_CODES = known_codes()
TOLERATED_CODES: set[str] = set()  # codes outside the documented ones that a run accepts: none


def error_body_problems(response, code: str | None = None) -> list[str]:
    """Jina's error body: a JSON object with string `code` (a documented one) and `detail` and a non-empty
    `request_id`, the request id also in the `X-Request-ID` header."""
    try:
        body = json.loads(response.content)
    except ValueError:
        return [f"{response.status_code} without a JSON body"]
    if not isinstance(body, dict):
        return [f"{response.status_code} body is not an object"]
    out = [f"`{k}` missing or not a string" for k in ("code", "detail", "request_id")
           if not isinstance(body.get(k), str)]
    if not out:
        if not body["request_id"] or not body["code"]:
            out.append("empty `code` or `request_id`")
        header = (response.headers.get("x-request-id") or [None])[0]
        if header != body["request_id"]:
            out.append(f"X-Request-ID header {header!r} differs from the body's request_id {body['request_id']!r}")
        if code is not None and body["code"] != code:
            out.append(f"code {body['code']!r}, expected {code!r}")
        if body["code"] not in KNOWN_CODES | TOLERATED_CODES:
            out.append(f"undocumented code {body['code']!r}")
    return out


def fuzz_operation(fuzz: Fuzz, strategy, max_examples: int, run_case, *, may_be_empty: bool = False) -> None:
    """Draw up to ``max_examples`` cases from ``strategy`` (derandomized: the same cases every run) and hand each to
    ``run_case``. No shrinking: failures are collected, not raised, so the run stays bounded. ``may_be_empty``: a
    strategy that can produce nothing (schemathesis' negative mode for an operation whose only input is a free-form
    string path parameter, or none at all) is fine."""

    @settings(
        max_examples=max_examples, deadline=None, derandomize=True, database=None, print_blob=False,
        phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def run(drawn):
        run_case(drawn)

    try:
        run()
    except Unsatisfiable:
        if not may_be_empty:
            raise


def operation(schema, method: str, path: str):
    return schema[path][method]


def modes(op) -> list[GenerationMode]:
    """Negative mode needs something to break: operations without parameters or body get positive cases only."""
    has_inputs = any(True for _ in op.iter_parameters()) or len(op.body) > 0
    return [GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if has_inputs else [GenerationMode.POSITIVE]


def fuzz_modes(fuzz: Fuzz, op, max_examples: int, run_case, steering, extra=None) -> None:
    """Positive and (where the operation has inputs) negative cases, each drawn with a steering patch (see
    :func:`steer`) and, with ``extra``, one more value; ``run_case`` gets ``(case, patch[, extra])``."""
    for mode in modes(op):
        parts = [op.as_strategy(generation_mode=mode), steering] + ([extra] if extra is not None else [])
        fuzz_operation(fuzz, st.tuples(*parts), max_examples, run_case, may_be_empty=mode is GenerationMode.NEGATIVE)


def steering(models: list[str], classifier_ids: list[str]):
    """Random names almost never hit a served model or an existing classifier, so most generated requests would stop
    at the first check (400 INPUT_MODEL_NOT_FOUND / 404). Most cases get a real model name or classifier id patched
    in (one patch drawn uniformly; `None` keeps the generated value), which sends them through the embedders, the
    learner and the state shards with everything else still generated."""
    # `None` last: Hypothesis favours the first elements
    return st.sampled_from([*({"model": m} for m in models), *({"classifier_id": c} for c in classifier_ids), None])


def steer(case, patch: dict | None):
    """Apply a steering patch to a generated case: to a JSON-object body (POST routes), or the `model_id` path
    parameter. DELETE is never steered (fuzzing must not delete the classifiers the other cases use)."""
    if not patch or case.operation.method.upper() == "DELETE":
        return case
    if isinstance(case.body, dict):
        case.body = {**case.body, **patch}
    elif "model" in patch and "model_id" in (case.path_parameters or {}):
        case.path_parameters = {**case.path_parameters, "model_id": patch["model"]}
    return case


def published_operations(schema) -> set[tuple[str, str]]:
    return {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()}


def train(base: str, headers: dict | None = None, **body) -> str:
    """A real classifier for the steered cases to use (few-shot classify, train updates)."""
    examples = [{"text": "Rain all day tomorrow", "label": "weather"},
                {"text": "The striker scored twice", "label": "sport"}]
    r = requests.post(f"{base}/v1/train", json={"model": "all-MiniLM-L6-v2", "input": examples, **body},
                      headers=headers, timeout=TIMEOUT_S)
    assert r.status_code == 200, r.text
    return r.json()["classifier_id"]


# -- the anonymous app (the session's) ---------------------------------------------------------------------------
ANON_MODELS = ["multilingual-e5-small", "all-MiniLM-L6-v2", "tiny-clip", "jina-embeddings-v3"]


@pytest.fixture(scope="module")
def anon_schema(serve_url):
    return schemathesis.openapi.from_url(f"{serve_url}/openapi.json", timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def anon_classifiers(serve_url):
    """Two classifiers for the steered cases; every classifier the fuzzing creates in the shared anonymous account
    (these two included) is deleted afterwards: other tests of the session count that account's classifiers."""
    before = {c["classifier_id"] for c in requests.get(f"{serve_url}/v1/classifiers", timeout=TIMEOUT_S).json()}
    yield [train(serve_url, access="public"), train(serve_url, access="private")]
    after = requests.get(f"{serve_url}/v1/classifiers", timeout=TIMEOUT_S).json()
    for c in after:
        if c["classifier_id"] not in before:
            r = requests.delete(f"{serve_url}/v1/classifiers/{c['classifier_id']}", timeout=TIMEOUT_S)
            assert r.status_code == 200, r.text


def test_schema_lists_every_route(anon_schema):
    assert published_operations(anon_schema) == set(OPERATIONS)


@pytest.mark.parametrize("method,path", OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_fuzz_anonymous(anon_schema, serve_url, anon_classifiers, reliability, method, path):
    op = operation(anon_schema, method, path)
    fuzz = Fuzz(serve_url)
    fuzz_modes(fuzz, op, EXAMPLES_PER_OPERATION, lambda drawn: fuzz.send(steer(*drawn)),
               steering(ANON_MODELS, anon_classifiers))
    fuzz.report(reliability, f"anonymous {method} {path}")
    fuzz.assert_clean()


# -- a second app with keys required -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keys_app(serve_url, tmp_path_factory):
    """Keys required, only MiniLM, its own store; yields (base url, admin key, plain key, classifier ids): the
    admin's account owns one public and one private classifier."""
    from ray import serve

    from classifiers.accounts.keys import AccountStore
    from classifiers.storage.store import LocalDirStore
    from serve_app.app import bind_app
    from serve_app.config import load_config

    store_dir = tmp_path_factory.mktemp("fuzz-keys-store")
    cfg = load_config({
        "app_name": KEYS_APP,
        "models": [KEYS_MODEL],
        "state": {"store_url": str(store_dir), "num_shards": 1},
        "ingress": {"ray_actor_options": {"num_cpus": 0.05}},
        "accounts": {"require_keys": True, "tiers": {"default": {m: BIG for m in ("zeroshot", "fewshot", "train")}}},
    }, env={})
    serve.run(bind_app(cfg), name=KEYS_APP, route_prefix=KEYS_PREFIX)
    store = AccountStore(LocalDirStore(store_dir))
    _, admin = store.create_key("fuzz-admin", admin=True)
    _, plain = store.create_key("fuzz-plain")
    base = f"{serve_url}{KEYS_PREFIX}"
    for _ in range(60):  # the route prefix answers once the proxy has picked the new app up
        if requests.get(f"{base}/ready", timeout=TIMEOUT_S).status_code == 200:
            break
        time.sleep(0.5)
    auth = {"Authorization": f"Bearer {admin}"}
    ids = [train(base, auth, access="public"), train(base, auth, access="private")]
    yield base, admin, plain, ids
    serve.delete(KEYS_APP)


@pytest.fixture(scope="module")
def keys_schema(keys_app):
    return schemathesis.openapi.from_url(f"{keys_app[0]}/openapi.json", timeout=TIMEOUT_S)


def test_keys_schema_lists_every_route(keys_schema):
    assert published_operations(keys_schema) == set(OPERATIONS)


@pytest.mark.parametrize("method,path", OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_fuzz_with_valid_keys(keys_app, keys_schema, reliability, method, path):
    """Valid keys (an admin's and a plain one, drawn per case): the same invariants as anonymous mode. The admin owns
    the steered classifiers, so the plain key meets the ownership rules (404 on the private one) and a plain key on
    /v1/stats gets 403 AUTHZ_INSUFFICIENT_PERMISSIONS, each with the body."""
    base, admin, plain, ids = keys_app
    op = operation(keys_schema, method, path)
    fuzz = Fuzz(base)
    fuzz_modes(fuzz, op, EXAMPLES_PER_OPERATION,
               lambda drawn: fuzz.send(steer(drawn[0], drawn[1]), {"Authorization": f"Bearer {drawn[2]}"}),
               steering([KEYS_MODEL, "no-such-model"], ids), extra=st.sampled_from([admin, plain]))
    fuzz.report(reliability, f"valid keys {method} {path}")
    fuzz.assert_clean()


# Authorization header values as the server receives them (h11 strips surrounding whitespace; requests refuses
# leading whitespace and line breaks): empty, other schemes, Bearer with nothing / several tokens / made-up keys.
_HEADER_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0xFF, blacklist_categories=("Cc",))
_TOKEN = st.text(_HEADER_CHARS, min_size=1, max_size=60)
AUTH_VALUES = st.one_of(
    st.none(),
    st.just(""),
    st.builds(lambda s: f"Bearer{s}", st.sampled_from(["", " ", "  "])),
    st.builds(lambda scheme, t: f"{scheme} {t}",
              st.sampled_from(["Basic", "Token", "bearer", "BEARER", "Bearer"]), _TOKEN),
    st.builds(lambda a, b: f"Bearer {a} {b}", _TOKEN, _TOKEN),
    st.builds(lambda kid, sec: f"Bearer rck_{kid}_{sec}", st.text("0123456789abcdef", min_size=12, max_size=12),
              st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", min_size=43, max_size=43)),
    st.builds(lambda t: t, _TOKEN),
)


def expected_auth_code(value: str | None) -> str:
    """What the service must answer for this header (no valid key can be generated): the code `parse_bearer` gives,
    else AUTH_INVALID_API_KEY."""
    from classifiers.accounts.keys import parse_bearer
    from classifiers.protocol.errors import AuthError

    try:
        parse_bearer(value.strip() if value is not None else None)
    except AuthError as err:
        return err.code
    return "AUTH_INVALID_API_KEY"



@pytest.mark.parametrize("method,path", OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_fuzz_without_valid_keys(keys_app, keys_schema, reliability, method, path):
    """No key, a malformed header or a made-up key: every /v1/* route answers 401 with the body and the code the
    header deserves, before the body is even read (see test_unauthenticated_invalid_body_answers_401); the open
    routes answer as usual."""
    base = keys_app[0]
    op = operation(keys_schema, method, path)
    fuzz = Fuzz(base)

    def run_case(drawn):
        case, patch, value = drawn
        case = steer(case, patch)
        headers = None if value is None else {"Authorization": value}
        if path in OPEN_ROUTES:
            fuzz.send(case, headers, expect={200})
        else:
            fuzz.send(case, headers, expect={401}, expect_code=expected_auth_code(value))

    fuzz_operation(fuzz, st.tuples(op.as_strategy(generation_mode=GenerationMode.POSITIVE),
                                   steering([KEYS_MODEL], keys_app[3]), AUTH_VALUES), AUTH_EXAMPLES, run_case)
    fuzz.report(reliability, f"no/invalid keys {method} {path}")
    fuzz.assert_clean()


def test_unauthenticated_invalid_body_answers_401(keys_app):
    base = keys_app[0]
    for body in ({"input": 5}, {"model": KEYS_MODEL, "input": ["a"], "labels": ["a", "b"],
                                "abstain": {"false_alarm_rate": 0.1, "threshold": 1.0}}):
        r = requests.post(f"{base}/v1/classify", json=body, timeout=TIMEOUT_S)
        assert r.status_code == 401 and r.json()["code"] == "AUTH_MISSING_API_KEY", r.text


# -- what schemathesis does not generate: raw bodies, content types, methods, unknown paths ----------------------
RAW_PATHS = [p.replace("{classifier_id}", "nope").replace("{model_id}", "nope") for _, p in OPERATIONS] + [
    "/v1/nothing", "/", "/v1", "/v1/classifiers/", "/v1/models/", "/docs", "/openapi.json",
]
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["model", "input", "labels", "classifier_id", "text", "image", "label", "num_iters", "abstain",
                         "access", "dimensions", "embedding_type", "false_alarm_rate", "threshold", "x"]),
        inner, max_size=5),
    max_leaves=12,
)
RAW_BODY = st.one_of(
    st.binary(max_size=120),
    st.text(max_size=80).map(lambda s: s.encode("utf-8", "surrogatepass")),
    JSONISH.map(lambda v: json.dumps(v).encode()),
    st.sampled_from([b"", b"{", b"[]", b"null", b"\"\"", b"{\"input\": \"\\ud800\"}", b"\xff\xfe",
                     b"{\"model\": \"all-MiniLM-L6-v2\", \"input\": [\"a\"], \"labels\": [\"x\\u0000\", \"y\"]}"]),
)


def test_fuzz_raw_requests(serve_url, anon_classifiers, reliability):
    """Random methods, paths, content types and bytes (invalid JSON, invalid UTF-8, lone surrogates, NUL) on the
    anonymous app: never a 5xx; every 4xx with the error body (HEAD answers carry no body by HTTP's rules)."""
    fuzz = Fuzz(serve_url)

    def run_case(drawn):
        method, path, ctype, body = drawn
        fuzz.cases += 1
        fuzz.requests += 1
        headers = {} if ctype is None else {"Content-Type": ctype}
        try:
            r = fuzz.session.request(method, serve_url + path, data=body if method not in ("GET", "HEAD") else None,
                                     headers=headers, timeout=TIMEOUT_S)
        except requests.RequestException as exc:
            fuzz.failures.append(f"{method} {path} {ctype} {body!r}\n  -> no response: {exc}")
            return
        fuzz.record(method, _Wrapped(r))
        problems = []
        if r.status_code >= 500:
            fuzz.server_errors += 1
            problems.append(f"a {r.status_code}")
        if 400 <= r.status_code < 600 and method != "HEAD":
            problems += error_body_problems(_Wrapped(r))
        if problems:
            fuzz.failures.append(f"{method} {path} Content-Type={ctype!r} body={body[:300]!r}\n  -> {r.status_code} "
                                 f"{r.content[:600]!r}\n  " + "\n  ".join(problems))

    strategy = st.tuples(
        st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]),
        st.sampled_from(RAW_PATHS),
        st.sampled_from([None, "application/json", "text/plain", "application/x-www-form-urlencoded",
                         "multipart/form-data", "application/json; charset=latin-1"]),
        RAW_BODY,
    )
    fuzz_operation(fuzz, strategy, RAW_EXAMPLES, run_case)
    fuzz.report(reliability, "raw requests")
    fuzz.assert_clean()


class _Wrapped:
    """A requests.Response seen like schemathesis' Response (headers as lists) for :func:`error_body_problems`."""

    def __init__(self, r):
        self.status_code, self.content = r.status_code, r.content
        self.headers = {k.lower(): [v] for k, v in r.headers.items()}


# -- the published contract for errors ---------------------------------------------------------------------------
def test_published_422_schema_matches_the_error_body(anon_schema, serve_url):
    """A schema-invalid request answers 422 with the body the app's own OpenAPI document promises for 422."""
    from schemathesis.checks import response_schema_conformance

    op = operation(anon_schema, "POST", "/v1/classify")
    case = op.Case(body={"input": 5})
    response = case.call(base_url=serve_url, timeout=TIMEOUT_S)
    assert response.status_code == 422
    case.validate_response(response, checks=[response_schema_conformance])


def test_non_utf8_body_answers_invalid_json(serve_url):
    r = requests.post(f"{serve_url}/v1/classify", data='{"model": "caf\u00e9", "input": ["a"]}'.encode("latin-1"),
                      headers={"Content-Type": "application/json"}, timeout=TIMEOUT_S)
    assert error_body_problems(_Wrapped(r)) == []
    assert (r.status_code, r.json()["code"]) == (400, "INPUT_INVALID_JSON"), r.text
