"""--log.format: logfmt and JSON lines, one record per line whatever the message holds."""

from __future__ import annotations

import json
import logging
import re
import shlex

import pytest
from pageheat import logs


def record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            import sys

            exc_info = sys.exc_info()
    return logging.LogRecord("pageheat", logging.WARNING, __file__, 1, msg, args, exc_info)


MESSAGES = ["plain", "cannot follow pid %d (%s): %s", 'quote " and back\\slash', "a=b c", "new\nline",
            "tab\tand \x1b escape", "", "ünïcödé"]


def logfmt_pairs(line: str) -> dict[str, str]:
    """Parse a logfmt line: key=value, value bare or double-quoted with JSON escapes."""
    out = {}
    for m in re.finditer(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)', line):
        key, value = m.group(1), m.group(2)
        out[key] = json.loads(value) if value.startswith('"') else value
    return out


@pytest.mark.parametrize("msg", MESSAGES)
def test_logfmt_is_one_line_and_parses_back(msg: str) -> None:
    args = (7, "x y", "z") if "%d" in msg else ()
    line = logs.LogfmtFormatter().format(record(msg, *args))
    assert "\n" not in line
    pairs = logfmt_pairs(line)
    assert pairs["msg"] == (msg % args if args else msg)
    assert pairs["level"] == "warning" and pairs["logger"] == "pageheat"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", pairs["ts"])


@pytest.mark.parametrize("msg", MESSAGES)
def test_json_is_one_object_per_line(msg: str) -> None:
    line = logs.JsonFormatter().format(record(msg))  # no args: the message is taken as is
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["msg"] == msg and obj["level"] == "warning"


@pytest.mark.parametrize("formatter", [logs.LogfmtFormatter(), logs.JsonFormatter()])
def test_a_traceback_stays_on_the_line(formatter: logging.Formatter) -> None:
    line = formatter.format(record("failed", exc=True))
    assert "\n" not in line
    exc = json.loads(line)["exc"] if line.startswith("{") else logfmt_pairs(line)["exc"]
    assert "ValueError: boom\nsecond line" in exc


def test_bare_values_need_no_quotes() -> None:
    line = logs.LogfmtFormatter().format(record("word"))
    assert " msg=word" in line and shlex.split(line)[-1] == "msg=word"


def test_setup_rejects_unknown_names() -> None:
    with pytest.raises(ValueError):
        logs.setup("verbose", "logfmt")
    with pytest.raises(ValueError):
        logs.setup("info", "xml")
