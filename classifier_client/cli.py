"""Command line client of the classification service (or of Jina's Classifier API, by --url).

    ./scripts/classify classify "Will it rain tomorrow?" "Who won the match?" --labels weather,sport
    ./scripts/classify classify --classifier ID < questions.txt           # one input per line from stdin
    ./scripts/classify train examples.csv --model all-MiniLM-L6-v2       # CSV columns text,label
    ./scripts/classify train --classifier ID --example "Heavy snow tonight=weather"
    ./scripts/classify list | delete ID | models | usage
    ./scripts/classify embed "hello world"
    python -m classifier_client models                                  # the same, without the script

--model defaults to $CLASSIFIER_MODEL, else jina-embeddings-v3 (Jina's name; an alias of the embedded default
here). Options before or after the command: --url (default $CLASSIFIER_URL, else http://127.0.0.1:8000), --api-key
(default $CLASSIFIER_API_KEY), --json (print the service's JSON body as it came, instead of a table), --timeout,
--retries (429/503/504 are retried honouring Retry-After). Exit status: 0 on success, 1 when the service answers
an error (printed to stderr as `code: detail (request_id ...)`; with --json the error body also goes to
stdout), 2 for bad arguments or unreadable input files.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import TextIO

from classifier_client.base import DEFAULT_BASE_URL, ENV_API_KEY, ENV_URL
from classifier_client.errors import ApiError
from classifier_client.sync_client import Client
from classifier_client.tables import (
    classify_table,
    clip,
    embedding_dim,
    format_table,
    input_label,
    preview_embedding,
)

PROG = "classify"
ENV_MODEL = "CLASSIFIER_MODEL"
# Jina's model name, which this service serves as an alias of its embedded default: right for both by default.
DEFAULT_MODEL = "jina-embeddings-v3"


# -- reading arguments and input files ---------------------------------------------------------------------------
class UsageError(ValueError):
    """Bad arguments or input files (exit status 2)."""


def split_labels(value: str) -> list[str]:
    """``"a,b, c"`` -> ``["a", "b", "c"]``; a JSON list (``'["a, b", "c"]'``) for labels that contain commas."""
    value = value.strip()
    if value.startswith("["):
        try:
            labels = json.loads(value)
        except json.JSONDecodeError as e:
            raise UsageError(f"labels look like JSON but are not: {e}") from None
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise UsageError("a JSON label list must be a list of strings")
        return labels
    labels = [x.strip() for x in value.split(",")]
    if not all(labels):
        raise UsageError(f"empty label in {value!r}")
    return labels


def parse_group(value: str) -> tuple[str, list[str]]:
    """``"topic=weather,sport"`` -> ``("topic", ["weather", "sport"])`` (a zero-shot label group)."""
    name, sep, labels = value.partition("=")
    if not sep or not name.strip():
        raise UsageError(f"a label group is NAME=a,b,c; got {value!r}")
    return name.strip(), split_labels(labels)


LABEL_SEPARATOR = "|"  # in a label: every label that applies to the example (multi-label), e.g. sport|weather


def example_label(cell: str) -> str | list[str]:
    """One label, or every label that applies when the cell names several (``a|b``)."""
    return [part.strip() for part in cell.split(LABEL_SEPARATOR)] if LABEL_SEPARATOR in cell else cell


def parse_example(value: str) -> dict:
    """``"text=label"`` -> ``{"text": ..., "label": ...}``; split at the last ``=`` (texts may contain ``=``)."""
    text, sep, label = value.rpartition("=")
    if not sep or not text or not label.strip():
        raise UsageError(f"an example is \"text=label\"; got {value!r}")
    return {"text": text, "label": example_label(label)}


def read_examples_csv(f: TextIO, name: str = "<csv>") -> list[dict]:
    """Training examples from CSV: a header with ``text`` (or ``image``) and ``label`` columns, in any order and
    with any other columns; or, without a header, exactly two columns text,label. Blank lines are skipped. A label
    cell with ``|`` lists every label that applies (``sport|weather``: multi-label)."""
    rows = [(i, r) for i, r in enumerate(csv.reader(f), 1) if any(c.strip() for c in r)]
    if not rows:
        raise UsageError(f"{name}: no examples")
    header = [c.strip().lower() for c in rows[0][1]]
    if "label" in header and ("text" in header or "image" in header):
        kind = "text" if "text" in header else "image"
        col, lab = header.index(kind), header.index("label")
        rows = rows[1:]
    elif len(rows[0][1]) == 2:
        kind, col, lab = "text", 0, 1
    else:
        raise UsageError(f"{name}: expected a header with text (or image) and label columns, or two columns text,label")
    out = []
    for line, r in rows:
        if len(r) <= max(col, lab) or not r[col] or not r[lab].strip():
            raise UsageError(f"{name}: line {line}: needs a {kind} and a label")
        out.append({kind: r[col], "label": example_label(r[lab])})
    if not out:
        raise UsageError(f"{name}: no examples after the header")
    return out



# -- argument parsing ------------------------------------------------------------------------------------------------
def _common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """The connection options, on the top parser (with defaults) and on every command (so they may come after it)."""
    d = (lambda v: v) if top else (lambda v: argparse.SUPPRESS)
    g = parser.add_argument_group("connection and output")
    g.add_argument("--url", default=d(None), help=f"service base URL (default ${ENV_URL}, else {DEFAULT_BASE_URL})")
    g.add_argument("--api-key", default=d(None), help=f"API key, sent as a bearer token (default ${ENV_API_KEY})")
    g.add_argument("--json", action="store_true", default=d(False), help="print the JSON response body as received")
    g.add_argument("--timeout", type=float, default=d(60.0), help="seconds per attempt (default 60)")
    g.add_argument("--retries", type=int, default=d(3), help="retries of 429/503/504 and connection failures (default 3)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        _common(p, top=False)
        return p

    c = command("classify", "zero-shot (--labels / --group) or few-shot (--classifier) classification")
    c.add_argument("texts", nargs="*", metavar="TEXT", help="inputs (none, or '-': one per line from stdin)")
    c.add_argument("--image", action="append", default=[], metavar="URL", help="an image input (URL, base64 or data: URI); repeatable")
    how = c.add_mutually_exclusive_group(required=True)
    how.add_argument("--labels", help="zero-shot labels: a,b,c (or a JSON list)")
    how.add_argument("--group", action="append", metavar="NAME=a,b,c", help="a zero-shot label group; repeatable")
    how.add_argument("--classifier", metavar="ID", help="a few-shot classifier id")
    c.add_argument("--model", help=f"zero-shot embedding model (default ${ENV_MODEL}, else {DEFAULT_MODEL})")
    ab = c.add_mutually_exclusive_group()
    ab.add_argument("--abstain-rate", type=float, metavar="R", help="ours: flag out-of-scope inputs at this false-alarm rate (e.g. 0.05)")
    ab.add_argument("--abstain-threshold", type=float, metavar="T", help="ours: flag out-of-scope inputs over this raw oos_score")
    c.add_argument("--multi-label", nargs="?", const=True, type=float, metavar="THRESHOLD",
                   help="ours: list every label that applies (LABELS column); optionally the probability each must reach")

    t = command("train", "create a few-shot classifier, or update one with --classifier")
    t.add_argument("csv", nargs="?", metavar="CSV", help="examples: columns text,label (header optional); '-' for stdin")
    t.add_argument("--example", action="append", default=[], metavar="TEXT=LABEL",
                   help="one example (TEXT=a|b: every label that applies); repeatable")
    t.add_argument("--model", help=f"embedding model of a new classifier (default ${ENV_MODEL}, else {DEFAULT_MODEL})")
    t.add_argument("--classifier", metavar="ID", help="update this classifier instead of creating one")
    t.add_argument("--num-iters", type=int, default=10, help="weight of this batch (num_iters/10; default 10)")
    t.add_argument("--access", choices=["private", "public"], default="private", help="of a new classifier (default private)")
    t.add_argument("--labels", help="ours: declare classes (a,b,c), with or without examples")
    t.add_argument("--idempotency-key", help="reuse to make a repeated command apply once (default: a new one)")
    t.add_argument("--learn-from-inputs", choices=["on", "off"],
                   help="ours: learn (on) or stop learning (off) from the inputs you classify with it; alone with "
                   "--classifier, an update of this setting only")

    command("list", "the caller's classifiers")
    d = command("delete", "delete a classifier")
    d.add_argument("classifier_id", metavar="ID")
    command("models", "served models and aliases")
    command("usage", "tokens and requests charged to your key (this service only)")

    e = command("embed", "embeddings (POST /v1/embeddings, Jina's format)")
    e.add_argument("texts", nargs="*", metavar="TEXT", help="inputs (none, or '-': one per line from stdin)")
    e.add_argument("--image", action="append", default=[], metavar="URL", help="an image input (multimodal models); repeatable")
    e.add_argument("--model", help=f"embedding model (default ${ENV_MODEL}, else {DEFAULT_MODEL})")
    e.add_argument("--dimensions", type=int, help="truncate (Matryoshka models)")
    e.add_argument("--embedding-type", choices=["float", "base64", "binary", "ubinary"], help="encoding (default float)")
    e.add_argument("--task", help="Jina's task name (accepted, ignored by this service)")
    return parser


def read_inputs(texts: list[str], images: list[str], stdin: TextIO) -> list:
    """TEXT arguments and --image URLs; with no TEXT (and no --image) or TEXT '-', one input per stdin line."""
    if texts == ["-"] or (not texts and not images):
        if stdin.isatty():
            raise UsageError("no inputs: give TEXT arguments, --image, or pipe one input per line on stdin")
        texts = [line.rstrip("\r\n") for line in stdin]
        texts = [t for t in texts if t.strip()]
    inputs: list = [*texts, *({"image": u} for u in images)]
    if not inputs:
        raise UsageError("no inputs")
    return inputs


def read_examples(opts: argparse.Namespace, stdin: TextIO) -> list[dict]:
    examples: list[dict] = []
    if opts.csv == "-":
        examples += read_examples_csv(stdin, "<stdin>")
    elif opts.csv:
        try:
            with open(opts.csv, newline="", encoding="utf-8-sig") as f:
                examples += read_examples_csv(f, opts.csv)
        except OSError as e:
            raise UsageError(f"{opts.csv}: {e.strerror or e}") from None
    examples += [parse_example(x) for x in opts.example]
    if not examples and not opts.labels and not (opts.classifier and opts.learn_from_inputs):
        raise UsageError("no examples: give a CSV file, --example TEXT=LABEL, or declared --labels")
    return examples


# -- commands --------------------------------------------------------------------------------------------------------
def default_model(opts: argparse.Namespace) -> str | None:
    """--model, else $CLASSIFIER_MODEL, else Jina's name; None when a --classifier is used (its model is fixed)."""
    if getattr(opts, "classifier", None):
        return opts.model
    return opts.model or os.environ.get(ENV_MODEL) or DEFAULT_MODEL


def run(opts: argparse.Namespace, client: Client, stdin: TextIO, out: TextIO, err: TextIO) -> None:
    """One command: call the service, print a table (or the raw body with --json). Raises ApiError, UsageError."""
    table: str | None = None
    usage: int | None = None
    if opts.command == "classify":
        inputs = read_inputs(opts.texts, opts.image, stdin)
        labels = split_labels(opts.labels) if opts.labels else dict(parse_group(g) for g in opts.group) if opts.group else None
        abstain = ({"false_alarm_rate": opts.abstain_rate} if opts.abstain_rate is not None else
                   {"threshold": opts.abstain_threshold} if opts.abstain_threshold is not None else None)
        r = client.classify(inputs, labels=labels, model=default_model(opts), classifier_id=opts.classifier, abstain=abstain,
                            multi_label=opts.multi_label)
        table, usage = classify_table(inputs, r), r.usage.total_tokens
    elif opts.command == "train":
        examples = read_examples(opts, stdin)
        trained = client.train(examples, model=default_model(opts), classifier_id=opts.classifier, access=opts.access,
                               num_iters=opts.num_iters, labels=split_labels(opts.labels) if opts.labels else None,
                               idempotency_key=opts.idempotency_key,
                               learn_from_inputs=None if opts.learn_from_inputs is None else opts.learn_from_inputs == "on")
        table = format_table(["CLASSIFIER_ID", "NUM_SAMPLES", "TOKENS"],
                             [[trained.classifier_id, trained.num_samples, trained.usage.total_tokens]], right=[1, 2])
    elif opts.command == "list":
        rows = [[s.classifier_id, s.model, s.access, "-" if s.num_samples is None else s.num_samples,
                 f"{s.inputs_learned}" + ("" if s.learn_from_inputs else " (off)"),
                 clip(", ".join(s.labels), 40), s.updated_at] for s in client.list()]
        table = format_table(["CLASSIFIER_ID", "MODEL", "ACCESS", "SAMPLES", "INPUTS_LEARNED", "LABELS", "UPDATED_AT"],
                             rows, right=[3, 4])
    elif opts.command == "delete":
        deleted = client.delete(opts.classifier_id)
        table = f"deleted {deleted.classifier_id}" if deleted.deleted else f"not deleted: {deleted.classifier_id}"
    elif opts.command == "models":
        rows = [[m.id, m.alias_of or "-", ",".join(m.input_modalities) or "-",
                 "-" if m.max_output_length is None else m.max_output_length, clip(m.description or m.name, 50)]
                for m in client.models().data]
        table = format_table(["ID", "ALIAS_OF", "INPUTS", "DIM", "DESCRIPTION"], rows, right=[3])
    elif opts.command == "usage":
        u = client.usage()
        rows = [[mode, m.requests, m.tokens] for mode, m in sorted(u.by_mode.items())] + [["total", u.requests, u.tokens]]
        table = format_table(["MODE", "REQUESTS", "TOKENS"], rows, right=[1, 2])
        if u.balance is not None:
            table += f"\nbalance: {u.balance} tokens, {u.balance_left} left"
    elif opts.command == "embed":
        inputs = read_inputs(opts.texts, opts.image, stdin)
        model = default_model(opts)
        assert model is not None  # embed has no --classifier: default_model falls back to DEFAULT_MODEL
        emb = client.embeddings(inputs, model=model, dimensions=opts.dimensions, embedding_type=opts.embedding_type, task=opts.task)
        rows = [[d.index, clip(input_label(inputs[d.index]), 40) if d.index < len(inputs) else "-",
                 embedding_dim(d.embedding), preview_embedding(d.embedding)] for d in emb.data]
        table, usage = format_table(["INDEX", "INPUT", "DIM", "EMBEDDING"], rows, right=[0, 2]), emb.usage.total_tokens
    if opts.json:
        print(client.last_response.text if client.last_response is not None else "null", file=out)
        return
    if table is not None:
        print(table, file=out)
    if usage is not None:
        print(f"usage: {usage} tokens", file=err)


def main(argv: list[str] | None = None, *, stdin: TextIO | None = None, stdout: TextIO | None = None,
         stderr: TextIO | None = None) -> int:
    stdin, out, err = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    parser = build_parser()
    opts = parser.parse_args(argv)
    client = Client(opts.url, opts.api_key, timeout=opts.timeout, max_retries=max(0, opts.retries))
    try:
        run(opts, client, stdin, out, err)
        return 0
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=err)
        return 2
    except ApiError as e:
        if opts.json and e.body is not None and client.last_response is not None:
            print(client.last_response.text, file=out)
        print(str(e), file=err)
        return 1
    except BrokenPipeError:  # `... | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
