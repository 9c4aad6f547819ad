"""Frozen runtime settings: the only module that reads the environment.

Every field is read from ``TRENDSTREAM_<NAME>`` (upper case) once, in ``__main__`` /
the CLI, and passed down. The README's settings table is generated from this class
(``trendstream settings --markdown``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

from stream.errors import SettingsError
from stream.webhooks import WebhookFormat, parse_secrets

REPO_ROOT = Path(__file__).resolve().parent.parent


class WebhookConfig(BaseModel):
    """One alert webhook, an item of ``TRENDSTREAM_WEBHOOKS`` (README, "Alert webhooks").

    The secret comes from ``secret_file`` (a mounted secret: read again for every alert,
    so a rotated file takes effect without a restart) or ``secret``; the file or value
    holds one ``whsec_...`` secret, or several separated by white space while rotating.
    Neither the secret nor the URL (which can hold a token) is logged: logs, counters
    and dead letters name the hook by ``name``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
                      description="the hook's name in logs, /stats and metrics")
    url: str = Field(min_length=1, max_length=2048)
    format: WebhookFormat = "trendstream"
    secret: SecretStr | None = None
    secret_file: Path | None = None

    @model_validator(mode="after")
    def _check(self) -> WebhookConfig:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"webhook {self.name!r}: url must be http(s)://host/...")
        if (self.secret is None) == (self.secret_file is None):
            raise ValueError(f"webhook {self.name!r}: give exactly one of secret, secret_file")
        if self.secret_file is not None and not self.secret_file.is_file():
            raise ValueError(f"webhook {self.name!r}: no secret file {self.secret_file}")
        try:
            self.secrets()
        except ValueError as exc:  # the message names the hook, never the secret
            raise ValueError(f"webhook {self.name!r}: {exc}") from None
        return self

    def secrets(self) -> list[str]:
        """The signing secrets, newest first (the file is read on every call)."""
        if self.secret is not None:
            return parse_secrets(self.secret.get_secret_value())
        assert self.secret_file is not None  # the validator demands one of the two
        return parse_secrets(self.secret_file.read_text())

    def describe(self) -> str:
        """Name, format and host only: a URL's path and query can hold a token."""
        parts = urlsplit(self.url)
        return f"{self.name} ({self.format}) {parts.scheme}://{parts.netloc.rpartition('@')[2]}"


class Settings(BaseSettings):
    """TrendStream worker and tool settings (env prefix ``TRENDSTREAM_``)."""

    model_config = SettingsConfigDict(env_prefix="TRENDSTREAM_", frozen=True, extra="ignore")

    # Kafka
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, "
                                 "comma separated; the one setting that points at a cluster")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="how every client of the worker and the tools talks to "
        "the brokers (README, \"Security\")")
    sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism (SASL_* protocols)")
    sasl_username: str | None = Field(None, description="SASL user name")
    sasl_password: SecretStr | None = Field(None, description="SASL password (prefer "
                                            "SASL_PASSWORD_FILE; never logged)")
    sasl_password_file: Path | None = Field(None, description="file holding the SASL "
                                            "password (e.g. a mounted Kubernetes secret)")
    ssl_cafile: Path | None = Field(None, description="CA bundle that signed the brokers' "
                                    "certificates (SSL, SASL_SSL); default: the system's")
    ssl_certfile: Path | None = Field(None, description="client certificate (mutual TLS)")
    ssl_keyfile: Path | None = Field(None, description="client private key (mutual TLS)")
    ssl_check_hostname: bool = Field(True, description="check that a broker's certificate "
                                     "names the host it was reached at")
    app_id: str = Field("trendstream", description="Faust app id: consumer group and "
                        "changelog-topic prefix")
    topic_prefix: str = Field("", description="prefix for every topic name (e.g. 'demo.')")
    topic_reviews: str = Field("reviews", description="input topic (ReviewEvent JSON)")
    topic_scores: str = Field("review-scores", description="scored reviews (ReviewScore)")
    topic_score_batches: str = Field("review-score-batches", description="internal: each "
                                     "scored micro-batch as one record per input partition "
                                     "(what the aggregator reads)")
    topic_trends: str = Field("trends", description="trend changes (TrendChange)")
    topic_dlq: str = Field("reviews-dlq", description="dead letters (DeadLetter)")
    topic_alerts: str = Field("trend-alerts", description="sharp-drop alerts (SharpDropAlert)")
    topic_trend_state: str = Field("trend-state", description="compacted: the latest trend "
                                   "of every product (TrendState; README, \"Current state "
                                   "for late joiners\")")
    partitions: int = Field(6, ge=1, le=1024, description="partitions of every topic the app "
                            "creates; the most worker replicas that share the load")
    replication_factor: int = Field(1, ge=1, le=16, description="replication factor of created "
                                    "topics")
    topic_retention_ms: int = Field(-1, ge=-1, description="retention.ms of created topics; "
                                    "-1 keeps replayed history forever")
    processing_guarantee: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once", description="at_least_once: outputs may repeat after a crash, as "
        "exact copies with the same ids (README, \"Processing guarantees\"); exactly_once: "
        "Kafka transactions, consumers read with isolation.level=read_committed")
    check_input_gaps: bool = Field(True, description="stop the worker when faust skips "
                                   "input offsets (a faust bug after table recovery; the "
                                   "restart reads them in order); off for input written by "
                                   "transactional producers (their commit markers take "
                                   "offsets)")
    stall_exit_after_s: float = Field(45.0, ge=0, le=3600, description="exit (code 3) when "
                                      "an assigned input partition has records waiting and "
                                      "no progress for this long (a faust consumer stall; "
                                      "the orchestrator restarts the worker); 0 = never")
    group_instance_id: str | None = Field(None, max_length=249, description="static group "
                                          "membership (e.g. the pod name of a StatefulSet): "
                                          "a restarted worker takes its partitions back "
                                          "without a rebalance; unique per replica")
    broker_session_timeout_s: float = Field(10.0, gt=0, le=300, description="consumer group "
                                            "session timeout")
    cloudevents: bool = Field(False, description="CloudEvents 1.0 binary-mode headers "
                              "(ce_id, ce_type, ce_source, ce_time, ...) on every record of "
                              "review-scores, trends, trend-state, trend-alerts and "
                              "reviews-dlq (README, \"Event contracts\")")
    # Model and scoring
    model_dir: Path = Field(REPO_ROOT / "models" / "default", description="model directory "
                            "(manifest.json, model files, tokenizer)")
    model_variant: Literal["auto", "fp32", "int8", "fp16"] = Field(
        "auto", description="which model file: auto = the manifest's default for the provider")
    execution_provider: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="ONNX Runtime provider; auto = CUDA when usable, else CPU")
    ort_intra_op_threads: int = Field(0, ge=0, le=256, description="ONNX Runtime intra-op "
                                      "threads; 0 = one per core")
    ort_allow_spinning: bool = Field(True, description="let ONNX Runtime's idle intra-op "
                                     "threads spin; off hands the cores to the event loop and "
                                     "the broker sooner (see README, Performance)")
    batch_max_size: int = Field(256, ge=1, le=4096, description="most reviews in one scoring "
                                "micro-batch")
    batch_max_wait_s: float = Field(0.05, gt=0, le=10, description="longest a review waits "
                                    "for its micro-batch to fill")
    max_event_bytes: int = Field(262_144, ge=1024, le=16_777_216, description="larger input "
                                 "records are dead-lettered as too_large")
    max_future_s: float = Field(86_400.0, ge=0, description="events timed more than this "
                                "after the worker's clock are dead-lettered as ts_out_of_range "
                                "(one far-future time would make its partition's later events "
                                "late)")
    dlq_max_raw_chars: int = Field(8192, ge=0, le=1_048_576, description="raw value kept in a "
                                   "dead letter (the sha256 covers all of it)")
    # Windows and trends
    allowed_lateness_s: float = Field(2 * 86_400.0, ge=0, description="events older than the "
                                      "partition's stream time minus this go to the DLQ as late")
    state_expire_after_days: int = Field(365, ge=1, le=36_500, description="a product with "
                                         "no review in its window and none for this many "
                                         "days of stream time is forgotten (its state "
                                         "record deleted; a later review starts it afresh)")
    aggregate_batch_max_records: int = Field(16, ge=1, le=10_000, description="most "
                                             "review-score-batches records the aggregator "
                                             "takes at once; each product's state is written "
                                             "once per take")
    idle_tick_interval_s: float = Field(0.0, ge=0, description="live feeds: every N s send a "
                                        "wall-clock tick to each partition so silent products "
                                        "turn falling; 0 = stream time from events only "
                                        "(replays)")
    min_reviews: int | None = Field(None, ge=1, description="override the manifest's minimum "
                                    "reviews in the window before any call")
    rise_enter_ratio: float | None = Field(None, gt=1, description="override: volume ratio "
                                           "that enters rising")
    rise_exit_ratio: float | None = Field(None, gt=0, description="override: ratio below which "
                                          "rising returns to stable")
    fall_enter_ratio: float | None = Field(None, gt=0, lt=1, description="override: ratio that "
                                           "enters falling")
    fall_exit_ratio: float | None = Field(None, gt=0, description="override: ratio above which "
                                          "falling returns to stable")
    silence: Literal["fall", "end"] = Field("fall", description="a product with no review for "
                                            "the detector's quiet_days: 'fall' (live feeds: "
                                            "silence is a fall) or 'end' (end of observation, "
                                            "e.g. a crawl that stopped: the state is held)")
    sharp_drop_fall: float | None = Field(None, gt=0, le=1, description="override: predicted "
                                          "fall at which a falling product raises a sharp-drop "
                                          "alert")
    evidence_top_k: int = Field(5, ge=0, le=100, description="review_ids kept as evidence in a "
                                "TrendChange")
    chaos_score_delay_s: float = Field(0.0, ge=0, le=60, description="testing only (make "
                                       "chaos): sleep this long in each of the first "
                                       "chaos_slow_batches micro-batches")
    chaos_slow_batches: int = Field(0, ge=0, description="testing only: how many micro-batches "
                                    "chaos_score_delay_s slows")
    # Alert webhooks (README, "Alert webhooks")
    webhooks: list[WebhookConfig] = Field([], description="alert webhooks, a JSON list: "
                                          "[{\"name\": \"ops\", \"url\": \"https://...\", "
                                          "\"format\": \"trendstream\" or \"alertmanager\", "
                                          "\"secret_file\": \"/run/secrets/ops\"}] (or "
                                          "\"secret\": \"whsec_...\"); empty: no delivery "
                                          "agent")
    webhook_timeout_s: float = Field(15.0, gt=0, le=300, description="timeout of one "
                                     "delivery attempt")
    webhook_max_attempts: int = Field(5, ge=1, le=100, description="attempts per alert and "
                                      "hook before it is counted as failed and dead-lettered")
    webhook_backoff_base_s: float = Field(1.0, gt=0, le=3600, description="wait before the "
                                          "first retry; doubles per retry, with jitter")
    webhook_backoff_max_s: float = Field(30.0, gt=0, le=3600, description="longest wait "
                                         "between two attempts (a longer Retry-After is cut "
                                         "to this)")
    webhook_max_delivery_s: float = Field(120.0, gt=0, le=3600, description="most time one "
                                          "alert may take for one hook, attempts and waits "
                                          "together; the alert offsets wait for it")
    webhook_concurrency: int = Field(16, ge=1, le=1000, description="alerts delivered at once "
                                     "(each to every hook)")
    webhook_external_url: str = Field("", description="externalURL and generatorURL of "
                                      "Alertmanager-format payloads (e.g. your dashboard)")
    # Web
    web_host: str = Field("127.0.0.1", description="bind address of the worker's web pages")
    web_port: int = Field(6066, ge=0, le=65535, description="port of the worker's web pages "
                          "(/healthz, /readyz, /stats)")
    web_canonical_url: str | None = Field(None, description="URL at which the other "
                                          "replicas reach this worker's pages (/products "
                                          "forwards there); default http://WEB_HOST:WEB_PORT. "
                                          "Kubernetes: http://$(POD_IP):6066 with WEB_HOST "
                                          "0.0.0.0")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log "
                                                                     "level")

    @model_validator(mode="after")
    def _check_hysteresis(self) -> Settings:
        if self.rise_enter_ratio and self.rise_exit_ratio and \
                self.rise_exit_ratio > self.rise_enter_ratio:
            msg = "rise_exit_ratio must be <= rise_enter_ratio; set TRENDSTREAM_RISE_EXIT_RATIO"
            raise ValueError(msg)
        if self.fall_enter_ratio and self.fall_exit_ratio and \
                self.fall_exit_ratio < self.fall_enter_ratio:
            msg = "fall_exit_ratio must be >= fall_enter_ratio; set TRENDSTREAM_FALL_EXIT_RATIO"
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _check_webhooks(self) -> Settings:
        names = [h.name for h in self.webhooks]
        if len(set(names)) != len(names):
            raise ValueError("TRENDSTREAM_WEBHOOKS: every hook needs its own name")
        if self.webhook_backoff_max_s < self.webhook_backoff_base_s:
            msg = ("webhook_backoff_max_s must be >= webhook_backoff_base_s; set "
                   "TRENDSTREAM_WEBHOOK_BACKOFF_MAX_S")
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _check_security(self) -> Settings:
        if self.security_protocol.startswith("SASL_"):
            if not self.sasl_username:
                raise ValueError("a SASL protocol needs TRENDSTREAM_SASL_USERNAME")
            if (self.sasl_password is None) == (self.sasl_password_file is None):
                msg = ("a SASL protocol needs exactly one of TRENDSTREAM_SASL_PASSWORD and "
                       "TRENDSTREAM_SASL_PASSWORD_FILE")
                raise ValueError(msg)
        for name in ("sasl_password_file", "ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"TRENDSTREAM_{name.upper()}: no file {path}")
        return self

    def sasl_secret(self) -> str | None:
        """The SASL password, from the setting or its file (read when a client is made)."""
        if self.sasl_password is not None:
            return self.sasl_password.get_secret_value()
        if self.sasl_password_file is not None:
            return self.sasl_password_file.read_text().strip()
        return None

    def topic(self, name: str) -> str:
        """Full topic name with the configured prefix."""
        return f"{self.topic_prefix}{name}"

    def detector_overrides(self) -> dict[str, float | int | str]:
        """Detector settings from the environment (they override the manifest)."""
        names = ("min_reviews", "rise_enter_ratio", "rise_exit_ratio", "fall_enter_ratio",
                 "fall_exit_ratio", "sharp_drop_fall")
        found: dict[str, float | int | str] = {n: getattr(self, n) for n in names
                                               if getattr(self, n) is not None}
        if self.silence != "fall":
            found["silence"] = self.silence
        return found


def load_settings(**overrides: object) -> Settings:
    """Read the environment once; a bad value raises SettingsError naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]  # pydantic-settings kwargs
    except ValidationError as exc:
        lines = [f"TRENDSTREAM_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}"
                 if e["loc"] else e["msg"].removeprefix("Value error, ")
                 for e in exc.errors(include_url=False)]
        msg = "invalid settings:\n  " + "\n  ".join(lines)
        raise SettingsError(msg) from exc
    except SourceError as exc:  # e.g. TRENDSTREAM_WEBHOOKS is not JSON (the value unshown)
        msg = f"invalid settings: {exc}: {exc.__cause__}" if exc.__cause__ else str(exc)
        raise SettingsError(msg) from None
