"""One settings class, read from LETHE_* environment variables."""

from __future__ import annotations

import os
import secrets
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.private_files import private_dir, private_file


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LETHE_", extra="ignore")

    data_dir: Path = Field(Path("./var"), description="State directory of the embedded deployment.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite under data_dir.")
    db_statement_timeout: float = Field(60.0, gt=0, description="Seconds a Postgres statement may wait for the "
                                        "server before its connection is shut down (a stalled server then answers "
                                        "503, not a hang); pings of pooled connections get min(this, 5).")
    broker_url: str | None = Field(None, description="Celery broker; default kombu sqla+sqlite under data_dir.")
    artifact_dir: Path | None = Field(None, description="Artifact store root; default data_dir/artifacts.")
    import_dir: Path | None = Field(None, description="Root of datasets registered by reference: a tenant names "
                                    "files under import_dir/<tenant id>/ only, and Lethe registers a copy (the "
                                    "original is never modified or deleted); default artifact_dir/imports.")
    secret_key: str | None = Field(None, description="HMAC key for identities; default generated in data_dir.")
    bootstrap_key: str | None = Field(None, description="First admin API key, created at start if absent.")
    device: str = Field("auto", description="Torch device of workers: auto | cpu | cuda[:n].")
    free_quantile: float = Field(0.10, ge=0.0, le=1.0, description="Provisional rule only (free_provisional): "
                                 "score quantile below which points are answered provisionally free.")
    free_budget: float = Field(0.02, ge=0.0, le=1.0, description="Provisional rule only: free deletions per "
                               "lineage, share of dataset.")
    free_provisional: bool = Field(False, description=(
        "Before a lineage has a valid reference pool, answer points below the score quantile as free, labelled "
        "'provisional' (nothing measured). Off by default: without a pool nothing is free ('unmeasured')."))
    reference_k: int = Field(16, ge=0, description="Shadow models per reference pool when a model's policy does "
                             "not set reference.k (even, >= 4; 0 = no pool, so nothing is measured free and "
                             "audits are inconclusive).")
    pool_max_removed: float = Field(0.1, gt=0.0, le=1.0, description=(
        "A reference pool stays valid until this share of the points it measured has been removed; then a new "
        "pool is queued and, until it is ready, nothing new is free."))
    free_auc_max: float = Field(0.55, ge=0.5, le=1.0, description="Certified free set: 95% upper bound of its "
                                "group LiRA AUC.")
    free_tpr_max: float = Field(0.02, ge=0.0, le=1.0, description="Certified free set: 95% upper bound of its "
                                "group LiRA TPR at 1% FPR.")
    audit_alpha: float = Field(0.01, gt=0.0, lt=1.0, description="The audit's null range is the retrained "
                               "models' two-sided (1 - alpha) prediction interval.")
    audit_on_inconclusive: Literal["escalate", "accept"] = Field(
        "escalate", description="What an inconclusive audit does when the model's policy does not say: escalate "
        "(stronger settings, then retraining, which is exact) or accept (promote, labelled inconclusive).")
    audit_min_power: float = Field(0.8, gt=0.0, lt=1.0, description="Below this power against 'not unlearned' "
                                   "an audit is inconclusive.")
    prune_separation_max: float = Field(0.6, ge=0.5, le=1.0, description=(
        "A job may prune a forget point (leave it out of the unlearning; its audit still covers it) only when the "
        "pool measured its own separation at most this (a looser, per-point bound than 'free')."))
    prune_quantile: float = Field(0.25, ge=0.0, le=1.0, description="Before calibration: job-time prune bound.")
    audit_max_acc_drop: float = Field(0.02, ge=0.0, le=1.0)
    audit_mia_auc_max: float = Field(0.55, ge=0.5, le=1.0)
    audit_mia_alpha: float = Field(0.05, gt=0.0, lt=1.0)
    audit_min_points: int = Field(20, ge=2)
    job_lease_seconds: float = Field(120.0, gt=0, description="A silent worker's job is re-run after this.")
    webhooks_allow_private: bool = Field(False, description="Allow loopback/private callback targets (tests, labs).")
    webhook_deadline: float = Field(10.0, gt=0, description="Seconds one webhook delivery may take in all "
                                    "(connect, send, the receiver's status line and headers); a slower receiver "
                                    "counts as failed and is retried with backoff.")
    webhook_workers: int = Field(8, ge=1, description="Sender threads delivering webhooks beside the relay.")
    webhook_tenant_concurrency: int = Field(2, ge=1, description="Deliveries of one tenant in flight at once: a "
                                            "slow receiver never takes the senders of other tenants.")
    relay_interval: float = Field(2.0, gt=0.0, description="Seconds between outbox relay passes.")
    verbose: bool = Field(False, description="`lethe serve`: its embedded worker logs at INFO with Celery's banner "
                          "(default: warnings only, no banner, no running-as-root warning).")
    erasure_interval: float = Field(10.0, ge=0.0, description=(
        "Seconds between erasure sweeps: points a forget request answered for free are erased in batches, one "
        "dataset rewrite per sweep instead of one per request (the rewrite is O(dataset)). 0 erases inside "
        "the request. Unlearning jobs erase what they clear as they finish either way."))
    max_upload_mb: int = Field(512, ge=1)
    redis_priority_steps: int = Field(10, ge=1)
    idempotency_ttl_hours: float = Field(24.0, gt=0, description="An Idempotency-Key replays its first answer "
                                         "for this long; afterwards the key may be used again.")
    score_shard_size: int = Field(20_000, ge=1, description="Points per shard task when a worker scores a "
                                  "larger dataset (shards run in parallel on every worker, joined by a chord).")
    host: str = "127.0.0.1"
    port: int = 8000
    ledger_key_path: Path | None = Field(
        None, description="PEM Ed25519 private key signing ledger checkpoints, deletion certificates and callback_url "
        "deliveries; default data_dir/ledger/signing.key, generated (0600) when missing.")
    webhook_rotation_grace_hours: float = Field(
        24.0, ge=0.0, description="After POST /webhooks/{id}/rotate the old secret stays valid this long: deliveries "
        "carry both signatures meanwhile.")
    opendsr_key_path: Path | None = Field(
        None, description="PEM private key (RSA 2048+ or EC) signing OpenDSR responses and callbacks; default "
        "data_dir/opendsr/key.pem. When the file is missing a development key is generated there.")
    opendsr_cert_path: Path | None = Field(
        None, description="PEM X.509 certificate of that key (CA-issued in production); default "
        "data_dir/opendsr/cert.pem, self-signed and generated with the development key.")
    opendsr_processor_domain: str | None = Field(
        None, description="X-OpenDSR-Processor-Domain; default the public URL's host, else the certificate's CN.")
    opendsr_public_url: str | None = Field(
        None, description="Base URL controllers reach Lethe at (discovery's processor_certificate); default the "
        "request's base URL.")
    opendsr_gdpr_days: int = Field(30, ge=1, description="GDPR deadline (one month) after receipt, in days.")
    opendsr_ccpa_days: int = Field(45, ge=1, description="CCPA deadline after receipt, in days.")
    opendsr_key_bits: int = Field(2048, ge=2048, description="RSA size of a generated development key.")
    max_body_mb: int = Field(32, ge=1, description="Largest non-upload request body (JSON); 413 beyond.")
    max_npz_expanded_mb: int = Field(8192, ge=1, description="Largest uncompressed size of a dataset npz; 422 beyond.")
    max_npz_ratio: float = Field(50.0, ge=1.0, description="Largest expansion of an npz over 16 MiB (zip bombs; "
                                 "real features compress a few times at most). The API reads only the npy "
                                 "headers of x and x_test; workers load them.")
    rate_limit_per_second: float = Field(
        200.0, ge=0.0, description="Requests per second per API key (token bucket; 0 disables). Kept in memory "
        "by each API process: N uvicorn workers allow N times this.")
    auth_failure_burst: int = Field(20, ge=1, description="Wrong API keys one client address may present at "
                                    "once; past it every authenticated route answers 429 until the budget refills.")
    auth_failures_per_minute: float = Field(10.0, gt=0, description="Refill of that budget, per minute (in each API "
                                            "process's memory).")
    max_layer_width: int = Field(8192, ge=1, description="Widest layer (hidden units, conv channels) a model may "
                                 "declare; 422 beyond.")
    max_layers: int = Field(32, ge=1, description="Most hidden layers / conv blocks a model may declare.")
    max_model_params: int = Field(100_000_000, ge=1, description="Most parameters a declared architecture may "
                                  "have on its dataset's input shape and classes.")
    max_epochs: int = Field(1000, ge=1, description="Most training epochs a recipe may ask for.")
    rate_limit_burst: int = Field(2000, ge=1, description="Token bucket size per API key: requests allowed at once.")

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.resolved_data_dir / 'lethe.db'}"

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.resolved_data_dir / 'broker.db'}"

    @property
    def celery_result_backend(self) -> str:
        """Where shard results meet their chord: Redis beside a Redis broker, else a database backend."""
        broker = self.celery_broker_url
        if broker.startswith(("redis://", "rediss://")):
            return broker
        if broker.startswith("sqla+"):
            return f"db+sqlite:///{self.resolved_data_dir / 'results.db'}"
        return "db+" + self.sqlalchemy_url

    @property
    def artifacts(self) -> Path:
        return (self.artifact_dir or self.resolved_data_dir / "artifacts").expanduser().resolve()

    @property
    def imports(self) -> Path:
        return (self.import_dir or self.artifacts / "imports").expanduser().resolve()

    def hmac_key(self) -> bytes:
        """The server secret for keyed hashes (and the HKDF root of every other server key: app.keys); the
        embedded default keeps a generated one on disk."""
        if self.secret_key:
            return self.secret_key.encode()
        return private_file(self.ensure_data_dir() / "secret.key", lambda: secrets.token_hex(32).encode()).strip()

    @property
    def ledger_key(self) -> Path:
        return (self.ledger_key_path or self.resolved_data_dir / "ledger" / "signing.key").expanduser().resolve()

    @property
    def webhook_grace(self) -> timedelta:
        return timedelta(hours=self.webhook_rotation_grace_hours)

    def ensure_data_dir(self) -> Path:
        """The data dir, readable by the service alone (0700: it holds keys and the embedded database); one an
        older version created group/world-readable is tightened."""
        path = private_dir(self.resolved_data_dir)
        st = path.stat()
        if st.st_mode & 0o077 and st.st_uid == os.getuid():
            path.chmod(0o700)
        return path


@lru_cache
def get_settings() -> Settings:
    return Settings()
