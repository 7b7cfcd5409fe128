"""Log lines on stderr in the formats exporters use (--log.format): logfmt, the default of
node_exporter and the exporter-toolkit, or one JSON object per line.

Both formats keep a record on one line: a traceback is a field, with its newlines escaped.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("logfmt", "json")


def _fields(record: logging.LogRecord, formatter: logging.Formatter) -> dict[str, str]:
    ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
    out = {"ts": ts.replace("+00:00", "Z"), "level": record.levelname.lower(),
           "logger": record.name, "msg": record.getMessage()}
    if record.exc_info:
        out["exc"] = formatter.formatException(record.exc_info)
    return out


def _logfmt_value(value: str) -> str:
    """A bare word, or a double-quoted string with \\, " and control characters escaped."""
    if value and all(c > " " and c not in '"=\\' and c != "\x7f" for c in value):
        return value
    return json.dumps(value, ensure_ascii=False)  # JSON's string escapes are logfmt's


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in _fields(record, self).items())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record, self), ensure_ascii=False)


def setup(level: str = "info", fmt: str = "logfmt") -> None:
    """Send every logger's records at ``level`` and above to stderr in ``fmt``.
    Raises ValueError for an unknown level or format (argparse checks both first)."""
    if level not in LEVELS or fmt not in FORMATS:
        raise ValueError(f"log level {level!r} or format {fmt!r} unknown")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter() if fmt == "logfmt" else JsonFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
