"""The OpenDSR request body (spec §5, §7) and what discovery announces."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

API_VERSION = "1.0"
# Spec §5.1: every identity type a controller may send. Only MATCHED ones are looked up in datasets' subjects.
IDENTITY_TYPES = (
    "controller_customer_id", "android_advertising_id", "android_id", "email", "fire_advertising_id",
    "ios_advertising_id", "ios_vendor_id", "microsoft_advertising_id", "microsoft_publisher_id",
    "roku_publisher_id", "roku_advertising_id",
)
MATCHED_TYPES = ("controller_customer_id", "email")
FORMATS = ("raw", "sha256", "sha1", "md5")
DIGEST_HEX = {"sha256": 64, "sha1": 40, "md5": 32}
REQUEST_TYPES = ("erasure", "access", "portability")
SUPPORTED_REQUEST_TYPES = ("erasure",)
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
HEX = re.compile(r"^[0-9a-f]+$")


class Identity(BaseModel):
    model_config = ConfigDict(extra="ignore")
    identity_type: str = Field(max_length=100)
    identity_value: str = Field(min_length=1, max_length=2000)
    identity_format: Literal["raw", "sha256", "sha1", "md5"]

    @field_validator("identity_type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in IDENTITY_TYPES:
            raise ValueError(f"unknown identity_type; one of {list(IDENTITY_TYPES)}")
        return value

    @model_validator(mode="after")
    def _digest_shape(self) -> Identity:
        # Error messages never repeat the value (spec §7.6: no identity data in errors).
        if self.identity_format != "raw":
            value = self.identity_value.strip().lower()
            if len(value) != DIGEST_HEX[self.identity_format] or not HEX.match(value):
                raise ValueError(f"a {self.identity_format} identity_value must be "
                                 f"{DIGEST_HEX[self.identity_format]} hex digits")
            self.identity_value = value
        return self


class OpenDsrCreate(BaseModel):
    """POST /opendsr_requests. `regulation` is required except on the legacy OpenGDPR route (default gdpr)."""

    model_config = ConfigDict(extra="ignore")
    regulation: Literal["gdpr", "ccpa"] | None = None
    subject_request_id: str
    subject_request_type: Literal["erasure", "access", "portability"]
    subject_identities: list[Identity] = Field(min_length=1, max_length=100)
    submitted_time: AwareDatetime
    api_version: str | None = Field(None, max_length=20)
    status_callback_urls: list[str] = Field(default_factory=list, max_length=20)
    extensions: dict[str, dict[str, Any]] | None = None

    @field_validator("subject_request_id")
    @classmethod
    def _uuid4(cls, value: str) -> str:
        if not UUID4.match(value):
            raise ValueError("subject_request_id must be a lowercase UUID v4")
        return value

    @field_validator("status_callback_urls")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if len(url) > 2000:
                raise ValueError("a status_callback_url is longer than 2000 characters")
        return list(dict.fromkeys(value))


def discovery(certificate_url: str) -> dict[str, Any]:
    return {
        "api_version": API_VERSION,
        "supported_identities": [{"identity_type": t, "identity_format": f} for t in MATCHED_TYPES for f in FORMATS],
        "supported_subject_request_types": list(SUPPORTED_REQUEST_TYPES),
        "processor_certificate": certificate_url,
    }
