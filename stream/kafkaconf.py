"""How every Kafka client here connects: one place turns the security settings into
aiokafka keyword arguments (and faust credentials). Secrets stay inside the objects."""

from __future__ import annotations

from typing import Any

from aiokafka.helpers import create_ssl_context

from stream.settings import Settings


def _ssl_context(settings: Settings) -> Any:
    context = create_ssl_context(
        cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None,
        certfile=str(settings.ssl_certfile) if settings.ssl_certfile else None,
        keyfile=str(settings.ssl_keyfile) if settings.ssl_keyfile else None)
    context.check_hostname = settings.ssl_check_hostname
    return context


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaProducer / Consumer / AdminClient."""
    protocol = settings.security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = _ssl_context(settings)
    if protocol.startswith("SASL_"):
        options.update(sasl_mechanism=settings.sasl_mechanism,
                       sasl_plain_username=settings.sasl_username,
                       sasl_plain_password=settings.sasl_secret())
    return options


def faust_credentials(settings: Settings) -> Any:
    """``broker_credentials`` for faust.App (None for PLAINTEXT)."""
    from faust.auth import SASLCredentials, SSLCredentials
    from faust.types.auth import SASLMechanism

    protocol = settings.security_protocol
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return SSLCredentials(_ssl_context(settings))
    return SASLCredentials(username=settings.sasl_username, password=settings.sasl_secret(),
                           ssl_context=_ssl_context(settings) if protocol == "SASL_SSL"
                           else None, mechanism=SASLMechanism(settings.sasl_mechanism))
