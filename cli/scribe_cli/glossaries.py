"""``scribe glossaries list|get|put|delete``: manage stored glossaries (scribe.v1.Glossaries).

``put`` reads a YAML or JSON file (by extension: ``.json`` is JSON, anything else YAML) holding a
``scribe.v1.Glossary`` in its JSON mapping; rule kinds may be written short::

    id: ml-infra-ko
    description: ML infrastructure terms in Korean calls
    terms:
      - term: vLLM
        aliases: ["브이엘엘엠", "V-N-R-M"]
      - term: Kubernetes
        aliases: ["쿠버네티스"]
    rules:
      - id: acronyms
        kind: ACRONYM_CASE
        acronyms: [API, GPU]

The service answers on the results address of the embedded stack.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from scribe.v1 import glossary_pb2, glossary_pb2_grpc
from scribe_cli import stack


def _stub() -> glossary_pb2_grpc.GlossariesStub:
    return glossary_pb2_grpc.GlossariesStub(stack.channel("results"))


def load_glossary(path: Path, glossary_id: str | None = None) -> glossary_pb2.Glossary:
    """Read a glossary file (YAML or JSON).

    Raises:
        ValueError: unreadable file or not a glossary.
    """
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        data: Any = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with id, terms and rules")
    for rule in data.get("rules") or []:
        kind = str(rule.get("kind", ""))
        if kind and not kind.startswith("RULE_KIND_"):
            rule["kind"] = f"RULE_KIND_{kind.upper()}"
    try:
        message = json_format.ParseDict(data, glossary_pb2.Glossary())
    except json_format.ParseError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    if glossary_id:
        message.id = glossary_id
    return message


def _line(g: glossary_pb2.Glossary) -> str:
    updated = g.update_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
    return f"{g.id:<32} v{g.version:<5} {len(g.terms):>5} terms {len(g.rules):>4} rules  {updated}  {g.description}"


def cmd_glossaries(args: argparse.Namespace) -> int:
    """Run one glossaries action; gRPC errors are reported by main."""
    stub = _stub()
    if args.action == "list":
        token = ""
        print(f"{'ID':<32} {'VERSION':<6} {'TERMS':>11} {'RULES':>10}  UPDATED")
        while True:
            reply = stub.ListGlossaries(glossary_pb2.ListGlossariesRequest(page_token=token))
            for g in reply.glossaries:
                print(_line(g))
            token = reply.next_page_token
            if not token:
                return 0
    if not args.target:
        print(f"error: scribe glossaries {args.action} needs an {'file' if args.action == 'put' else 'id'}",
              file=sys.stderr)
        return 2
    if args.action == "get":
        reply = stub.GetGlossary(glossary_pb2.GetGlossaryRequest(id=args.target, version=args.version))
        print(json_format.MessageToJson(reply.glossary, preserving_proto_field_name=True, ensure_ascii=False))
    elif args.action == "put":
        try:
            message = load_glossary(Path(args.target), args.id)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        request = glossary_pb2.PutGlossaryRequest(glossary=message)
        if args.expected_version is not None:
            request.expected_version = args.expected_version
        stored = stub.PutGlossary(request).glossary
        print(f"stored {stored.id} version {stored.version}")
    elif args.action == "delete":
        stub.DeleteGlossary(glossary_pb2.DeleteGlossaryRequest(id=args.target))
        print(f"deleted {args.target}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``scribe glossaries``."""
    p = subparsers.add_parser("glossaries", help="list, get, put or delete stored glossaries")
    p.add_argument("action", choices=["list", "get", "put", "delete"])
    p.add_argument("target", nargs="?", help="glossary id (get, delete) or file (put)")
    p.add_argument("--version", type=int, default=0, help="get: a stored version (default: latest)")
    p.add_argument("--id", help="put: store under this id instead of the file's")
    p.add_argument("--expected-version", type=int, help="put: only if the stored version is this (0: new)")
    p.set_defaults(func=cmd_glossaries)
