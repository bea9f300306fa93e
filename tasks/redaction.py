"""Credentials never reach a log, an MLflow param or tag, or a link (issue 15, item 8).

A URI may carry a secret in its user-info (``https://user:password@host``, ``postgresql://u:p@db/x``,
``s3://KEY:SECRET@bucket``) or in a query parameter (``?password=…``, a presigned URL's
``X-Amz-Signature=…``). :func:`redact` replaces each such secret in a text with ``***`` and keeps the
rest of the URI, so a reader still sees which server was meant. :class:`RedactCredentials` applies it to
every record of Prefect's run loggers, the ones whose records go to the Prefect API's log table.
"""

from __future__ import annotations

import logging
import re

MASK = "***"
# scheme://user:secret@ or scheme://secret@ (a token alone as user-info): the part before "@" is hidden.
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<userinfo>[^/\s@'\"<>]+)@")
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&;](?:[\w\-]*(?:password|passwd|pwd|secret|token|signature|credential|access[_-]?key|"
    r"api[_-]?key|sig)[\w\-]*)=)(?P<value>[^&#\s'\"<>]+)",
    re.IGNORECASE,
)
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


def _mask_userinfo(match: re.Match[str]) -> str:
    user, colon, _ = match["userinfo"].partition(":")
    return f"{match['scheme']}{user}:{MASK}@" if colon else f"{match['scheme']}{MASK}@"


def redact(text: str) -> str:
    """``text`` with the password (or lone token) of every URI's user-info and the value of every
    secret-looking query parameter replaced by ``***``."""
    return _SECRET_QUERY.sub(rf"\g<key>{MASK}", _USERINFO.sub(_mask_userinfo, text))


class RedactCredentials(logging.Filter):
    """Rewrites a record's message, arguments merged, through :func:`redact` (exception text included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        record.msg, record.args = redact(message), None
        return True


def install_log_redaction() -> None:
    """Add :class:`RedactCredentials` to Prefect's run loggers once (idempotent)."""
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactCredentials) for f in logger.filters):
            logger.addFilter(RedactCredentials())
