"""The ``/products/{product_id}`` page: any replica answers, the owner of the product speaks.

Faust glue around :mod:`stream.products`. The worker asked computes the product's
partition (Kafka's default partitioner on the product_id, :func:`key_partition`), looks
up which worker holds that partition of the windows table in faust's assignor metadata
(``app.router.table_metadata``, refreshed at every rebalance) and either answers from
its own table or forwards the request there once, with the header ``ROUTED_BY``.

Not ``app.table_route``: faust hashes the table's serialized key, and a ``key_type=str``
table serializes keys as JSON, so it would route most products to a worker that does
not hold them (stream/products.py). A forwarded request is never forwarded again: when
two workers disagree during a rebalance, the answer is 503 (retry), not a loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import aiohttp
import faust
from yarl import URL

from stream.products import key_partition, owner_url, summary
from stream.trends import DetectorParams
from stream.windows import partition_of_state

ROUTED_BY: Final = "X-TrendStream-Routed-By"
FORWARD_TIMEOUT_S: Final = 10.0


def add_product_page(app: faust.App, table: faust.Table, *, params: DetectorParams,
                     model_id: str, partitions: int, is_recovered: Callable[[], bool]) -> None:
    """Register ``GET /products/{product_id}`` on the app's web server."""
    changelog = table.changelog_topic.get_topic_name()

    @app.page("/products/{product_id:.+}")  # ids may hold "/" (sent raw or as %2F)
    async def product(web_view: Any, request: Any, product_id: str) -> Any:
        me = str(app.conf.canonical_url)
        partition = key_partition(product_id, partitions)
        metadata = app.router.table_metadata(table.name)
        owner = owner_url(metadata, changelog, partition)
        routed_by = request.headers.get(ROUTED_BY)
        where = {"product_id": product_id, "partition": partition, "worker": me}
        if owner is None or (owner != me and routed_by is not None):
            return web_view.json({"error": "no worker holds this product's partition right "
                                  "now (a rebalance); retry", **where}, status=503,
                                 headers={"Retry-After": "1"})
        if owner != me:
            return await _forward(app, web_view, URL(owner) / "products" / product_id, me,
                                  where)
        if not is_recovered():
            return web_view.json({"error": "the tables are still recovering; retry", **where},
                                 status=503, headers={"Retry-After": "1"})
        raw = table.data.get(product_id)
        if raw is None or owner_url(metadata, changelog, partition_of_state(raw)) != me:
            return web_view.json({"error": "unknown product: no state for it (no review yet, "
                                  "or forgotten after TRENDSTREAM_STATE_EXPIRE_AFTER_DAYS)",
                                  **where}, status=404)
        body = summary(bytes(raw), params=params, model_id=model_id)
        return web_view.json({**body, **where, "partition": partition_of_state(raw),
                              "routed_by": routed_by})

    del product  # registered on the app by the decorator


async def _forward(app: faust.App, web_view: Any, url: URL, me: str,
                   where: dict[str, Any]) -> Any:
    """GET the owner's answer and pass it on as it is (status and body)."""
    timeout = aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S)
    try:
        async with app.http_client.get(url, headers={ROUTED_BY: me}, timeout=timeout) as resp:
            body = await resp.read()
            return web_view.bytes(body, content_type=resp.content_type, status=resp.status)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return web_view.json({"error": f"the worker holding this product ({url.origin()}) "
                              f"did not answer: {exc!r}"[:500], **where}, status=502)
