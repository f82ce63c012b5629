"""Log formatting as ``log`` configures it: registry:2's text or JSON lines, its fields,
and an access log that cannot be forged through the request path."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping

from entrepot import requestinfo
from entrepot.config import LogConfig
from entrepot.http.accesslog import AccessLines

__all__ = ["EscapeControlCharacters", "JsonFormatter", "RequestIdFilter", "configure_logging"]


class RequestIdFilter(logging.Filter):
    """Gives every record the id of the request it was written for (X-Request-Id), so
    the lines of one request can be found together; ``request_suffix`` is " id=..." for
    text logs (the access line carries the id already)."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = requestinfo.current_request_id()
        record.request_id = request_id
        shown = request_id != "-" and record.name != "entrepot.access"
        record.request_suffix = f" id={request_id}" if shown else ""
        return True


class JsonFormatter(logging.Formatter):
    """registry:2's ``log.formatter: json`` (and logstash): one JSON object per line, with
    the configured ``log.fields``."""

    def __init__(self, fields: Mapping[str, str]) -> None:
        super().__init__()
        self.fields = dict(fields)

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **self.fields,
        }
        request_id = getattr(record, "request_id", "-")
        if request_id != "-":
            entry["request_id"] = request_id
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(log: LogConfig) -> None:
    level = getattr(logging, log.level.upper(), logging.INFO)
    if log.formatter in ("json", "logstash"):
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter(log.fields))
        logging.basicConfig(level=level, handlers=[handler])
    else:
        fields = " ".join(f"{k}={v}" for k, v in sorted(log.fields.items()))
        fmt = "%(asctime)s %(levelname)s %(name)s " + (f"{fields} " if fields else "")
        logging.basicConfig(level=level, format=fmt + "%(message)s%(request_suffix)s")
    for root_handler in logging.getLogger().handlers:
        if not any(isinstance(f, RequestIdFilter) for f in root_handler.filters):
            root_handler.addFilter(RequestIdFilter())
    # The access log is one bare line per request (Apache's combined format first, as
    # registry:2 writes it), so log tools that read registry:2's keep working.
    access = logging.getLogger("entrepot.access")
    if not access.handlers:
        access.addHandler(AccessLines())
        access.propagate = False
    access.setLevel(logging.INFO)
    granian_access = logging.getLogger("granian.access")
    if not any(isinstance(f, EscapeControlCharacters) for f in granian_access.filters):
        granian_access.addFilter(EscapeControlCharacters())


_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f\"]")


class EscapeControlCharacters(logging.Filter):
    """Granian's access log writes the decoded request path as it came: a "%0d%0a" in it
    would start a line of the attacker's choosing, a '"' would end the quoted field. Both are
    written percent-encoded instead (registry:2 logs the raw, still-escaped request URI)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, Mapping):
            record.args = {
                key: _CONTROL_CHARACTERS.sub(lambda m: f"%{ord(m.group()):02X}", value)
                if isinstance(value, str)
                else value
                for key, value in record.args.items()
            }
        return True
