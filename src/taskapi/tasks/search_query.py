"""The search grammar of GET /tasks?search=...: user text to a PostgreSQL tsquery (pure).

Every user-supplied piece becomes a quoted term, so no input can inject tsquery operators.
"""

from __future__ import annotations

import re
from typing import Final

MAX_SEARCH_TERMS: Final = 32

_TOKEN = re.compile(r"(-?)\"([^\"]*)\"?|(-?)([^\s\"]+)")
# What may stand inside one quoted tsquery term: word characters and the joiners PostgreSQL's
# parser keeps within a single lexeme (node.js, e-mail, alice@example.com, v2.0, C++, C#).
# Quote and backslash are never kept, so nothing can leave the quotes.
_PIECE = re.compile(r"[\w.@/+#-]+")


def _pieces(token: str) -> list[str]:
    """Quoted terms for one whitespace-free token; characters outside _PIECE separate terms."""
    return [f"'{piece}'" for piece in _PIECE.findall(token) if any(c.isalnum() for c in piece)]


def _phrase(terms: list[str]) -> str:
    return terms[0] if len(terms) == 1 else "(" + " <-> ".join(terms) + ")"


def build_tsquery(text: str) -> str | None:
    """Turn user input into tsquery syntax in which every user-supplied piece is a quoted term,
    so no input can inject operators. Words match as prefixes (`sql` finds `SQLAlchemy`),
    "quoted phrases" match adjacent words in order, and a leading `-` excludes a word or phrase.
    PostgreSQL then parses, unaccents and stems each term with the search configuration."""
    include: list[str] = []
    exclude: list[str] = []
    for match in _TOKEN.finditer(text):
        negated = bool(match.group(1) or match.group(3))
        phrase = match.group(2)
        if phrase is not None:
            terms = [term for word in phrase.split() for term in _pieces(word)]
        else:
            terms = _pieces(match.group(4))
            if terms:
                terms[-1] += ":*"
        if not terms:
            continue
        (exclude if negated else include).append(_phrase(terms))
        if len(include) + len(exclude) >= MAX_SEARCH_TERMS:
            break
    if not include:
        # Only exclusions (or nothing searchable): nothing positive to rank or match on.
        return None
    return " & ".join(include + [f"!{term}" for term in exclude])
