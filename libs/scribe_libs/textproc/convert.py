"""Conversions between ``scribe.v1.Glossary`` messages and the engine's dataclasses.

The stubs come from ``python tools/gen_protos.py``; they are imported lazily so the engine works
without them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from scribe_libs.errors import InvalidArgument
from scribe_libs.textproc.glossary import GlossaryMatcher
from scribe_libs.textproc.models import Glossary, GlossaryTerm, NumberOptions, Rule, RuleKind
from scribe_libs.textproc.rules import compile_rules


def glossary_from_proto(message: Any) -> Glossary:
    """``scribe.v1.Glossary`` -> :class:`Glossary` (times are not carried)."""
    return Glossary(
        id=message.id,
        version=message.version,
        description=message.description,
        terms=tuple(GlossaryTerm(t.term, tuple(t.aliases), t.case_sensitive) for t in message.terms),
        rules=tuple(
            Rule(
                id=r.id,
                kind=RuleKind(r.kind) if r.kind in RuleKind._value2member_map_ else RuleKind.UNSPECIFIED,
                pattern=r.pattern,
                replacement=r.replacement,
                case_sensitive=r.case_sensitive,
                acronyms=tuple(r.acronyms),
                number_options=NumberOptions(
                    r.number_options.strip_thousands_separators, r.number_options.strip_currency_amounts
                ),
                description=r.description,
            )
            for r in message.rules
        ),
    )


def glossary_to_proto(
    glossary: Glossary, create_time: datetime | None = None, update_time: datetime | None = None
) -> Any:
    """:class:`Glossary` -> ``scribe.v1.Glossary``.

    Args:
        glossary: The glossary.
        create_time: Set on the message when given (timezone-aware).
        update_time: Set on the message when given (timezone-aware).
    """
    from scribe.v1 import glossary_pb2

    message = glossary_pb2.Glossary(
        id=glossary.id,
        version=glossary.version,
        description=glossary.description,
        terms=[
            glossary_pb2.GlossaryTerm(term=t.term, aliases=t.aliases, case_sensitive=t.case_sensitive)
            for t in glossary.terms
        ],
        rules=[
            glossary_pb2.Rule(
                id=r.id,
                kind=int(r.kind),
                pattern=r.pattern,
                replacement=r.replacement,
                case_sensitive=r.case_sensitive,
                acronyms=r.acronyms,
                number_options=glossary_pb2.NumberOptions(
                    strip_thousands_separators=r.number_options.strip_thousands_separators,
                    strip_currency_amounts=r.number_options.strip_currency_amounts,
                ),
                description=r.description,
            )
            for r in glossary.rules
        ],
    )
    if create_time is not None:
        message.create_time.FromDatetime(create_time)
    if update_time is not None:
        message.update_time.FromDatetime(update_time)
    return message


def validate_glossary(glossary: Glossary) -> None:
    """Check a glossary as ``PutGlossary`` should before storing it.

    Raises:
        InvalidArgument: ``INVALID_GLOSSARY`` (empty id, empty term) or ``INVALID_RULE`` (empty or
            duplicate rule id, unknown kind, bad regex, missing pattern or acronyms).
    """
    if not glossary.id.strip():
        raise InvalidArgument("INVALID_GLOSSARY", "glossary id is empty", field="glossary.id")
    GlossaryMatcher([glossary])
    compile_rules(glossary.rules, glossary.id)
