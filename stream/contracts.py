"""JSON Schemas (draft 2020-12) of the records on TrendStream's topics, generated here.

The models in :mod:`stream.events` are the source; this module turns each into the
published contract, ``schemas/<name>.schema.json``, adding what the models cannot say
for themselves (README, "Event contracts"):

* ``$schema``, ``$id`` (``urn:trendstream:schema:<name>:v<schema_version>``), title and
  description; ``schema_version`` as a ``const`` (required on outputs; optional on the
  input, where a missing one means 1);
* outputs are an open content model: no ``additionalProperties: false``, because a field
  added within a schema_version must not break a consumer that validates with the older
  file (consumers ignore unknown fields); times are ``...Z`` to the second;
* the input (``ReviewEvent``) also carries the rules the parser applies in code: no
  control characters in identifiers, a text that is not blank, an RFC 3339 time with an
  offset;
* code lists that may grow within a version (a dead letter's ``reason`` and ``stage``)
  are strings with their known values as ``examples``, not a closed ``enum``.

``trendstream schemas --out schemas`` writes the files; ``--check`` (and a unit test)
fails when the checked-in files differ from what the code generates. Pure: nothing here
imports jsonschema, Kafka or the model.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel

from stream import events
from stream.events import (
    DeadLetter,
    ReviewEvent,
    ReviewScore,
    SharpDropAlert,
    TrendChange,
    TrendState,
)
from stream.webhooks import WEBHOOK_PAYLOAD_SCHEMA_VERSION, AlertWebhookPayload

DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
ID_PREFIX: Final = "urn:trendstream:schema:"
SUFFIX: Final = ".schema.json"
UTC_SECONDS: Final = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$"
CONTROL_CHARACTER: Final = r"[\u0000-\u001f\u007f-\u009f]"  # as events._CONTROL
NOT_BLANK: Final = r"\S"

Schema = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Contract:
    """One published record shape: its file name, model, version and where it travels."""

    name: str
    model: type[BaseModel]
    version: int
    where: str
    is_input: bool = False

    @property
    def file_name(self) -> str:
        return f"{self.name}{SUFFIX}"

    @property
    def schema_id(self) -> str:
        return f"{ID_PREFIX}{self.name}:v{self.version}"


def contracts() -> list[Contract]:
    """Every contract, input first."""
    return [
        Contract("review-event", ReviewEvent, events.REVIEW_SCHEMA_VERSION,
                 "value of the reviews topic (written by your producers)", is_input=True),
        Contract("review-score", ReviewScore, events.SCORE_SCHEMA_VERSION,
                 "value of review-scores"),
        Contract("trend-change", TrendChange, events.TREND_SCHEMA_VERSION, "value of trends"),
        Contract("trend-state", TrendState, events.TREND_STATE_SCHEMA_VERSION,
                 "value of the compacted trend-state topic (a null value is a tombstone)"),
        Contract("sharp-drop-alert", SharpDropAlert, events.ALERT_SCHEMA_VERSION,
                 "value of trend-alerts"),
        Contract("dead-letter", DeadLetter, events.DEAD_LETTER_SCHEMA_VERSION,
                 "value of reviews-dlq"),
        Contract("alert-webhook-payload", AlertWebhookPayload, WEBHOOK_PAYLOAD_SCHEMA_VERSION,
                 "body of a 'trendstream'-format alert webhook request (README, \"Alert "
                 "webhooks\")"),
    ]


def generate(contract: Contract) -> Schema:
    """The published JSON Schema of one contract."""
    body = contract.model.model_json_schema(mode="validation")
    for schema in _objects(body):
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)  # "Review Id": pydantic's noise next to the name
        if not contract.is_input and schema.get("additionalProperties") is False:
            del schema["additionalProperties"]
    if contract.is_input:
        _input_rules(body)
    else:
        _utc_seconds(body)
    _open_lists(contract, body)
    _version(body, contract)
    description = body.pop("description", "").strip()
    return {"$schema": DIALECT, "$id": contract.schema_id, "title": body.pop("title"),
            "description": f"{description}\n\nschema_version {contract.version}; "
                           f"{contract.where}.",
            **body}


def render(schema: Schema) -> str:
    """The file text: stable key order as generated, two-space indent, final newline."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def write_all(out: Path) -> list[Path]:
    """Write every contract's file to ``out``; return the paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for contract in contracts():
        path = out / contract.file_name
        path.write_text(render(generate(contract)), encoding="utf-8")
        written.append(path)
    return written


def differences(out: Path) -> list[str]:
    """What differs between ``out`` and what the code generates (empty: up to date)."""
    found = []
    wanted = {c.file_name: render(generate(c)) for c in contracts()}
    for name, text in wanted.items():
        path = out / name
        if not path.is_file():
            found.append(f"{path}: missing")
        elif path.read_text(encoding="utf-8") != text:
            found.append(f"{path}: differs from the code")
    found += [f"{path}: no such contract in the code" for path in sorted(out.glob(f"*{SUFFIX}"))
              if path.name not in wanted]
    return found


def load(out: Path, name: str) -> Schema:
    """A checked-in schema by contract name (e.g. ``trend-change``)."""
    return json.loads((out / f"{name}{SUFFIX}").read_text(encoding="utf-8"))


def closed(schema: Schema) -> Schema:
    """A copy that refuses any property the schema does not name (tests: our own outputs
    must carry nothing undocumented)."""
    strict = copy.deepcopy(schema)
    for sub in _objects(strict):
        if "properties" in sub and "additionalProperties" not in sub:
            sub["additionalProperties"] = False
    return strict


def _objects(schema: Any) -> Iterator[Schema]:
    """Every sub-schema (dict) of a schema, the root included."""
    if isinstance(schema, dict):
        yield schema
        for value in schema.values():
            yield from _objects(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _objects(value)


def _property(body: Schema, name: str) -> Schema:
    try:
        return body["properties"][name]
    except KeyError:
        msg = f"{body.get('title')} has no field {name!r}; update stream/contracts.py"
        raise KeyError(msg) from None


def _version(body: Schema, contract: Contract) -> None:
    prop = _property(body, "schema_version")
    text = f"{contract.version}: the version of this contract"
    if contract.is_input:
        prop.clear()
        prop.update(const=contract.version, default=contract.version,
                    description=f"{text}; a missing schema_version means "
                                f"{contract.version}, any other value is dead-lettered "
                                "(unsupported_schema_version)")
        return
    prop.clear()
    prop.update(const=contract.version, description=text)
    required = body.setdefault("required", [])
    if "schema_version" not in required:
        required.insert(0, "schema_version")


def _utc_seconds(body: Schema) -> None:
    for schema in _objects(body):
        if schema.get("format") == "date-time":
            schema["pattern"] = UTC_SECONDS


def _input_rules(body: Schema) -> None:
    """What stream.events.parse_review checks in code, said in the schema."""
    # "not": {"pattern"} rather than an anchored pattern: Python's "$" also matches
    # before a final newline, ECMA-262's does not
    no_control = {"not": {"pattern": CONTROL_CHARACTER}}
    for name in ("review_id", "product_id"):
        _property(body, name).update(copy.deepcopy(no_control))
    for name in ("category", "source"):
        prop = _property(body, name)
        next(s for s in prop["anyOf"] if s.get("type") == "string").update(
            copy.deepcopy(no_control))
    _property(body, "text")["pattern"] = NOT_BLANK
    _property(body, "ts")["description"] = (
        "event time: RFC 3339 with an offset (Z or +hh:mm), e.g. 2017-01-02T00:00:00Z; not "
        "before 1990 and not more than TRENDSTREAM_MAX_FUTURE_S after the worker's clock "
        "(else dead-lettered as ts_out_of_range)")
    body["description"] = (
        f"{body.get('description', '')}\n\nUnknown fields are ignored (and counted). The "
        "whole record is at most TRENDSTREAM_MAX_EVENT_BYTES (256 KiB by default) of UTF-8 "
        "JSON, keyed by product_id or with no key.")


# (contract name, field) -> (what it is, its known values): listed as examples, not as a
# closed enum
_OPEN_LISTS: Final[dict[tuple[str, str], tuple[str, Callable[[Schema], list[str]]]]] = {
    ("dead-letter", "reason"): ("why, a stable code", lambda prop: list(events.REASONS)),
    ("dead-letter", "stage"): ("the agent that gave up on the record",
                               lambda prop: list(prop.get("enum", []))),
}


def _open_lists(contract: Contract, body: Schema) -> None:
    for (name, field), (what, known) in _OPEN_LISTS.items():
        if name != contract.name:
            continue
        prop = _property(body, field)
        values = known(prop)
        prop.clear()
        prop.update(type="string", description=(
            f"{what}; known values: {', '.join(values)}. More may be added within this "
            "schema_version: treat an unknown one as a failure of an unknown kind"),
            examples=values)
