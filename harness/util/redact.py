"""Credentials never leave the harness: URLs are shown with their passwords masked."""

from __future__ import annotations

import logging
import re

# scheme://user:password@host -> scheme://user:***@host (also inside longer text)
_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)(?P<pw>[^@\s/]+)(?=@)")
# ...?password=secret or &token=... query parameters
_QUERY = re.compile(r"(?i)(?P<head>[?&](?:password|passwd|pwd|token|secret|key)=)(?P<pw>[^&\s]+)")


def redact(text: str) -> str:
    """`text` with every password in a URL (and password-like query values) masked."""
    text = _PASSWORD.sub(lambda m: m["head"] + "***", text)
    return _QUERY.sub(lambda m: m["head"] + "***", text)


class RedactingFilter(logging.Filter):
    """A logging filter that masks credentials in every record it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True
