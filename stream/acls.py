"""The Kafka ACLs a worker's principal needs on a secured cluster (README, "Event
contracts"). Pure: ``trendstream acls`` prints them as ``kafka-acls.sh`` commands and
the ACL test grants exactly these to a worker on a broker with an authorizer.

Read, Write, Create and Delete imply Describe (Kafka's authorizer), so Describe is not
listed. On Kafka 3.0 and later, Write on a topic also allows idempotent producing
(KIP-679): no cluster-level IdempotentWrite. Create is needed on every topic even when
an admin created them all: faust declares its topics at start, and the broker checks
Create before it looks whether the topic exists (measured: "Cannot create topic:
<app_id>-__assignor-__leader (29): Authorization failed" on a pre-created topic).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from stream.settings import Settings

ResourceType = Literal["TOPIC", "GROUP", "TRANSACTIONAL_ID"]
PatternType = Literal["LITERAL", "PREFIXED"]
Operation = Literal["READ", "WRITE", "CREATE"]

# Kafka's wire codes (org.apache.kafka.common.resource / acl), for admin requests
RESOURCE_CODES: Final = {"TOPIC": 2, "GROUP": 3, "TRANSACTIONAL_ID": 5}
PATTERN_CODES: Final = {"LITERAL": 3, "PREFIXED": 4}
OPERATION_CODES: Final = {"READ": 3, "WRITE": 4, "CREATE": 5}


@dataclass(frozen=True, slots=True)
class Acl:
    """One ALLOW rule for the worker's principal, from any host."""

    resource: ResourceType
    name: str
    pattern: PatternType
    operation: Operation
    why: str

    def command(self, principal: str, *, bootstrap: str = "$BOOTSTRAP") -> str:
        """The ``kafka-acls.sh`` line that grants it."""
        flag = {"TOPIC": "--topic", "GROUP": "--group",
                "TRANSACTIONAL_ID": "--transactional-id"}[self.resource]
        return (f"kafka-acls.sh --bootstrap-server {bootstrap} --add --allow-principal "
                f"{principal} --operation {self.operation.title()} {flag} '{self.name}' "
                f"--resource-pattern-type {self.pattern.lower()}")


def worker_acls(settings: Settings, *, exactly_once: bool | None = None) -> list[Acl]:
    """What the worker's principal needs; ``exactly_once`` defaults to the settings'
    guarantee."""
    t, app = settings.topic, settings.app_id
    wanted: list[tuple[ResourceType, str, PatternType, tuple[Operation, ...], str]] = [
        ("TOPIC", t(settings.topic_reviews), "LITERAL", ("READ",), "the input"),
        ("TOPIC", t(settings.topic_score_batches), "LITERAL", ("READ", "WRITE"),
         "internal: scored micro-batches"),
        *[("TOPIC", t(name), "LITERAL", ("WRITE",), "an output") for name in (
            settings.topic_scores, settings.topic_trends, settings.topic_trend_state,
            settings.topic_alerts, settings.topic_dlq)],
        ("TOPIC", f"{app}-", "PREFIXED", ("READ", "WRITE"), "faust's table changelogs "
         f"({app}-<table>-changelog) and its leader topic ({app}-__assignor-__leader)"),
        ("GROUP", app, "LITERAL", ("READ",), "the consumer group (commits, offsets)"),
    ]
    if settings.webhooks:
        wanted.append(("TOPIC", t(settings.topic_alerts), "LITERAL", ("READ",),
                       "the alert webhooks' delivery agent reads the alerts"))
    if exactly_once if exactly_once is not None else \
            settings.processing_guarantee == "exactly_once":
        wanted.append(("TRANSACTIONAL_ID", f"{app}-", "PREFIXED", ("WRITE",),
                       f"faust's transactional producers ({app}-<group>-<partition>)"))
    acls = [Acl(r, name, p, op, why) for r, name, p, ops, why in wanted for op in ops]
    acls += [Acl("TOPIC", a.name, a.pattern, "CREATE", "created when missing; declared "
                 "by faust at every start") for a in acls if a.resource == "TOPIC"]
    return _unique(acls)


def _unique(acls: list[Acl]) -> list[Acl]:
    seen: set[tuple[str, str, str, str]] = set()
    out = []
    for acl in acls:
        key = (acl.resource, acl.name, acl.pattern, acl.operation)
        if key not in seen:
            seen.add(key)
            out.append(acl)
    return out
