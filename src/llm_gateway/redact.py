"""Secrets out of every text we show or log: upstream error messages, URLs, query strings.

One scrubber for both providers, the task record and the logs, so a key an upstream echoes back
(``Incorrect API key provided: sk-ant-…``) never reaches a client.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

# Keys of Anthropic (sk-ant-…), OpenAI (sk-…, sk-proj-…), Google (AIza…), PiAPI-style hex keys, and bearer tokens.
_SECRET = re.compile(
    r"\b(?:sk-[\w*.-]{6,}|AIza[\w*.-]{6,}|(?:Bearer|Basic)\s+[\w*.~+/=-]{8,}|[0-9a-f]{32,})",
    re.IGNORECASE,
)
SECRET_PARAMS = frozenset({"api_key", "apikey", "key", "token", "access_token", "x-api-key"})


def scrub(text: str) -> str:
    """``text`` with anything that looks like a key replaced by ``[redacted]``."""
    return _SECRET.sub("[redacted]", text)


def mask_url(url: str) -> str:
    """``url`` with its ``user:password@`` and secret query values masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return scrub(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=netloc, query=mask_query(parts.query)))


def mask_query(query: str) -> str:
    """A query string with the values of secret parameters (however they are percent-encoded) masked."""
    if not query:
        return query
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(unquote(name).lower() in SECRET_PARAMS for name, _ in pairs):
        return query
    return urlencode([(name, "***" if name.lower() in SECRET_PARAMS else value) for name, value in pairs], safe="*")
