"""Storage URLs as they may be shown: the password never leaves the process.

A storage URL such as ``postgresql+psycopg2://user:secret@host/db`` is needed whole to connect,
and shown in many places: the command's output, error lines, logs, the spec stored in the
study (which the report, the dashboard and the exported model card repeat, and ``upload``
publishes). ``hide_password`` is the one way a URL is rendered; ``hide_passwords`` scrubs
free text (an error message, a stored spec written before this rule) of every URL password.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

HIDDEN = "***"
MIN_SCRUBBED = 4  # a shorter password is also a common word: replacing it bare would garble text

# scheme://user:password@ -- in free text the password ends at the first '@' (SQLAlchemy's own
# reading: a literal '@' in a password must be written %40); a URL alone is read to its last '@'
_SCHEME_USER = r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s'\"]*:)"
_IN_TEXT = re.compile(_SCHEME_USER + r"(?P<pw>[^@\s'\"]*)@")
_WHOLE = re.compile(_SCHEME_USER + r"(?P<pw>\S*)@")


def hide_password(url: str) -> str:
    """``url`` with its password replaced by ``***`` (unchanged when it has none)."""
    return _WHOLE.sub(lambda m: f"{m['head']}{HIDDEN}@", url, count=1)


def hide_passwords(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    return _IN_TEXT.sub(lambda m: f"{m['head']}{HIDDEN}@", text)


def password_of(url: str) -> str | None:
    """The password a URL carries, if any (to scrub it from messages of other libraries)."""
    match = _WHOLE.search(url)
    return match["pw"] if match and match["pw"] else None


def scrub(text: str, url: str) -> str:
    """``text`` without ``url``'s password anywhere in it (a driver may quote it bare)."""
    secret = password_of(url)
    if secret and len(secret) >= MIN_SCRUBBED:
        for form in {secret, unquote(secret)}:
            text = text.replace(form, HIDDEN)
    return hide_passwords(text)
