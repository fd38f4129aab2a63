"""Every table, imported once so Base.metadata is complete (Alembic, tests)."""

from app.datasets.tables import Dataset, Point
from app.db import Base
from app.evidence.tables import ReferencePool
from app.forget.tables import Disposition, ForgetRequest
from app.idempotency import IdempotencyKey
from app.jobs.tables import Audit, Job, JobRequest, Outbox
from app.ledger.tables import Checkpoint, LedgerEntry
from app.opendsr.tables import OpenDsrLink, OpenDsrRequest
from app.registry.tables import InfluenceRun, Model, Version
from app.tenants.tables import ApiKey, Tenant
from app.webhooks.tables import Delivery, Webhook

__all__ = [
    "ApiKey", "Audit", "Base", "Checkpoint", "Dataset", "Disposition", "ForgetRequest", "InfluenceRun", "Job",
    "JobRequest", "LedgerEntry", "Model", "Outbox", "Point", "Tenant", "Version",
    "Delivery", "Webhook", "OpenDsrLink", "OpenDsrRequest", "IdempotencyKey", "ReferencePool",
]
