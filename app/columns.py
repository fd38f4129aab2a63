"""Column types the tables share, each declared once (`id: Mapped[UuidPk]`): the same SQL as spelling them out."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, declared_attr, mapped_column

from app.db import new_id, utcnow

UuidPk = Annotated[str, mapped_column(String(36), primary_key=True, default=new_id)]  # datasets, jobs, requests, ...
SerialPk = Annotated[int, mapped_column(Integer, primary_key=True, autoincrement=True)]  # high-volume rows
TenantId = Annotated[str, mapped_column(ForeignKey("tenants.id"), index=True)]  # the owner: every query filters on it
Name = Annotated[str, mapped_column(String(200))]  # a dataset's or model's name, unique within its tenant
PointId = Annotated[str, mapped_column(String(200))]  # a training point's id as its dataset names it
CreatedAt = Annotated[datetime, mapped_column(default=utcnow)]


class NamedPerTenant:
    """A tenant's object that callers name (datasets, models): its id, its tenant, a name unique in the tenant."""

    id: Mapped[UuidPk]
    tenant_id: Mapped[TenantId]
    name: Mapped[Name]

    @declared_attr.directive
    def __table_args__(cls) -> tuple[UniqueConstraint, ...]:
        return (UniqueConstraint("tenant_id", "name"),)
