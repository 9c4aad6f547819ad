"""The ACL table of the README, proven on a broker with an authorizer: a worker whose
principal holds exactly ``stream.acls.worker_acls`` (and nothing else) consumes, scores,
aggregates, writes every output and delivers its alert to a webhook; the authorizer
really refuses what is not granted. The webhook body is checked against its schema."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAuthorizationFailedError
from aiokafka.protocol.admin import CreateAclsRequest

from stream.acls import OPERATION_CODES, PATTERN_CODES, RESOURCE_CODES, Acl, worker_acls
from stream.kafkaconf import client_options
from stream.replay import plan, produce
from stream.settings import Settings
from stream.topics import ensure_topics

from .helpers import secure_broker, start_worker, unique_env, wait_for
from .schema_check import check_outputs, validator
from .test_worker_kafka import _same_partition_ids, _series

pytestmark = [pytest.mark.integration, pytest.mark.skipif(
    bool(os.environ.get("TRENDSTREAM_KAFKA_BOOTSTRAP")),
    reason="starts its own broker with an authorizer; not with an external cluster")]

USER = "trend-worker"
# The PLAINTEXT listener (and the controller) authenticate as ANONYMOUS: the test's own
# admin, producer and reader. The worker comes in over SASL_SSL as USER.
AUTHORIZER = """authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS
allow.everyone.if.no.acl.found=false
"""


@pytest.fixture(scope="module")
def acl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A broker with StandardAuthorizer, a SCRAM user and no ACL for it yet."""
    with secure_broker(tmp_path_factory.mktemp("acl-kafka"), USER,
                       broker_properties=AUTHORIZER) as broker:
        yield broker


async def _grant(bootstrap: str, principal: str, acls: list[Acl]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for acl in acls:
            request = CreateAclsRequest(RESOURCE_CODES[acl.resource], acl.name,
                                        PATTERN_CODES[acl.pattern], principal, "*",
                                        OPERATION_CODES[acl.operation], 3)  # 3 = ALLOW
            response = await admin._send_request(request)
            assert [e[0] for e in response.creation_responses] == [0], (acl, response)
    finally:
        await admin.close()


def _outputs(plain: Settings) -> tuple[int, int, int, int]:
    checked = check_outputs(plain, cloudevents=False)
    return (checked["review-score"], checked["trend-change"], checked["sharp-drop-alert"],
            checked["dead-letter"])


async def _create_topics_as_admin(plain: Settings) -> None:
    """What an admin creates beforehand: the app's topics, its changelogs (stream.topics)
    and faust's one-partition leader topic."""
    await ensure_topics(plain)
    admin = AIOKafkaAdminClient(bootstrap_servers=plain.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(f"{plain.app_id}-__assignor-__leader", 1, 1)])
    finally:
        await admin.close()


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[bytes]]]:
    """A local webhook endpoint that keeps every body and answers 204: (URL, bodies)."""
    bodies: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["content-length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", bodies
    finally:
        server.shutdown()
        thread.join(10)


async def _send_as_worker(settings: Settings, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap,
                                **client_options(settings))
    await producer.start()
    try:
        await asyncio.wait_for(producer.send_and_wait(topic, b"{}"), timeout=30)
    finally:
        await producer.stop()


@pytest.mark.parametrize(("guarantee", "topics_exist"), [("at_least_once", True),
                                                         ("exactly_once", False)])
def test_the_worker_runs_with_exactly_the_documented_acls(
        acl_broker: dict[str, str], tiny_model_dir: Path, tmp_path: Path, guarantee: str,
        topics_exist: bool, receiver: tuple[str, list[bytes]]) -> None:
    """760 reviews and 3 malformed through a worker that holds only its documented ACLs:
    at-least-once on topics an admin created, delivering its alert to a webhook;
    exactly-once creating its own topics."""
    url, bodies = receiver
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    hooks = [{"name": "ops", "url": url, "secret": secret}] if topics_exist else []
    env = unique_env(acl_broker["secure"], tiny_model_dir, TRENDSTREAM_ALLOWED_LATENESS_S="0",
                     TRENDSTREAM_SECURITY_PROTOCOL="SASL_SSL",
                     TRENDSTREAM_SASL_MECHANISM="SCRAM-SHA-512",
                     TRENDSTREAM_SASL_USERNAME=USER,
                     TRENDSTREAM_SASL_PASSWORD_FILE=acl_broker["password_file"],
                     TRENDSTREAM_SSL_CAFILE=acl_broker["cafile"],
                     TRENDSTREAM_PROCESSING_GUARANTEE=guarantee,
                     TRENDSTREAM_WEBHOOKS=json.dumps(hooks))
    settings = Settings(**{k.removeprefix("TRENDSTREAM_").lower(): v for k, v in env.items()
                           if k != "TRENDSTREAM_WEBHOOKS"}, webhooks=hooks)
    plain = Settings(kafka_bootstrap=acl_broker["plain"], topic_prefix=settings.topic_prefix,
                     app_id=settings.app_id)
    acls = worker_acls(settings)
    assert any(a.resource == "TRANSACTIONAL_ID" for a in acls) is (guarantee == "exactly_once")
    if topics_exist:
        asyncio.run(_create_topics_as_admin(plain))
    asyncio.run(_grant(acl_broker["plain"], f"User:{USER}", acls))
    a, b = _same_partition_ids(2)
    records = plan(_series(a, b), malformed=3, seed=1)
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        asyncio.run(produce(plain, records, topic=plain.topic("reviews")))
        # committed (read_committed) and valid against schemas/: every output was written
        wait_for(lambda: _outputs(plain) == (760, 5, 1, 3), timeout_s=180,
                 what="every output committed")
        wait_for(lambda: len(bodies) == len(hooks), timeout_s=60, what="the webhook")
        assert (worker.get("/readyz") or {}).get("ready")
    finally:
        code = worker.stop()  # after the checks: a failed stop must not hide their message
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "AuthorizationFailed" not in log and "not authorized" not in log.lower()
    assert code == 0, worker.log_tail()
    # the authorizer is on: the worker may not write to its own input
    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(_send_as_worker(settings, settings.topic("reviews")))
    payload = validator("alert-webhook-payload")
    for body in bodies:  # the 'trendstream' body a real worker sent, against its schema
        assert not list(payload.iter_errors(json.loads(body))), body
        assert not list(validator("alert-webhook-payload", closed=True).iter_errors(
            json.loads(body))), body
