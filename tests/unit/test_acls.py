"""The worker's ACL list (stream.acls): exact for the default settings and a prefixed app."""

from __future__ import annotations

from stream.acls import worker_acls
from stream.settings import Settings


def test_default_worker_acls_are_exactly_these() -> None:
    """Topics by name, app-id prefixed internals, the group; Create on every topic."""
    got = {(a.resource, a.name, a.pattern, a.operation) for a in worker_acls(Settings())}
    topics = ("reviews", "review-score-batches", "review-scores", "trends", "trend-state",
              "trend-alerts", "reviews-dlq")
    assert got == {
        ("TOPIC", "reviews", "LITERAL", "READ"),
        ("TOPIC", "review-score-batches", "LITERAL", "READ"),
        ("TOPIC", "review-score-batches", "LITERAL", "WRITE"),
        *{("TOPIC", t, "LITERAL", "WRITE") for t in topics[2:]},
        *{("TOPIC", t, "LITERAL", "CREATE") for t in topics},
        ("TOPIC", "trendstream-", "PREFIXED", "READ"),
        ("TOPIC", "trendstream-", "PREFIXED", "WRITE"),
        ("TOPIC", "trendstream-", "PREFIXED", "CREATE"),
        ("GROUP", "trendstream", "LITERAL", "READ"),
    }


def test_webhooks_add_read_on_the_alerts() -> None:
    """With a webhook configured the worker also consumes trend-alerts."""
    hook = {"name": "ops", "url": "http://127.0.0.1:9/", "secret": "whsec_" + "A" * 44}
    plain = {(a.name, a.operation) for a in worker_acls(Settings())}
    hooked = {(a.name, a.operation) for a in worker_acls(Settings(webhooks=[hook]))}
    assert hooked - plain == {("trend-alerts", "READ")}


def test_exactly_once_adds_the_transactional_ids_and_names_follow_the_settings() -> None:
    """exactly_once: Write on transactional ids '<app_id>-*'; topic names take the prefix."""
    acls = worker_acls(Settings(app_id="shop", topic_prefix="eu.",
                                processing_guarantee="exactly_once"))
    assert ("TRANSACTIONAL_ID", "shop-", "PREFIXED", "WRITE") in {
        (a.resource, a.name, a.pattern, a.operation) for a in acls}
    assert {a.name for a in acls if a.pattern == "LITERAL" and a.resource == "TOPIC"} == {
        "eu.reviews", "eu.review-score-batches", "eu.review-scores", "eu.trends",
        "eu.trend-state", "eu.trend-alerts", "eu.reviews-dlq"}
    assert acls[0].command("User:x") == (
        "kafka-acls.sh --bootstrap-server $BOOTSTRAP --add --allow-principal User:x "
        "--operation Read --topic 'eu.reviews' --resource-pattern-type literal")
