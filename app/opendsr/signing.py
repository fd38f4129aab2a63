"""The processor's key and X.509 certificate: every OpenDSR response and callback body is signed with them.

RSA keys sign with PKCS#1 v1.5 over SHA-256 (FIPS 186-4); EC keys, if an operator's CA issued one, with
ECDSA over SHA-256. The embedded default generates a development RSA key and a self-signed certificate on
first use and says loudly that production needs a CA-issued one (the spec forbids self-signed certificates).
"""

from __future__ import annotations

import base64
import fcntl
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from app.db import utcnow
from app.private_files import private_dir
from app.settings import get_settings

log = logging.getLogger("lethe.opendsr")


@dataclass(frozen=True)
class Signer:
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    cert_pem: bytes
    self_signed: bool

    @property
    def common_name(self) -> str | None:
        names = self.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(names[0].value) if names else None

    def sign(self, body: bytes) -> str:
        """Base64 signature of the SHA-256 digest of `body`."""
        if isinstance(self.key, rsa.RSAPrivateKey):
            raw = self.key.sign(body, padding.PKCS1v15(), hashes.SHA256())
        else:
            raw = self.key.sign(body, ec.ECDSA(hashes.SHA256()))
        return base64.b64encode(raw).decode()


def verify(cert_pem: bytes, body: bytes, signature: str) -> bool:
    """Check a base64 signature of `body` against a PEM certificate (what a controller does)."""
    public = x509.load_pem_x509_certificate(cert_pem).public_key()
    try:
        raw = base64.b64decode(signature, validate=True)
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(raw, body, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(raw, body, ec.ECDSA(hashes.SHA256()))
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


def paths() -> tuple[Path, Path]:
    """(key, certificate) paths: the settings', else under the data dir."""
    settings = get_settings()
    home = settings.resolved_data_dir / "opendsr"
    key = (settings.opendsr_key_path or home / "key.pem").expanduser().resolve()
    cert = (settings.opendsr_cert_path or home / "cert.pem").expanduser().resolve()
    return key, cert


def signer(common_name: str | None = None) -> Signer:
    """The signing key and certificate, generating a development pair when the files do not exist.

    `common_name` (the processor domain) names a generated certificate; an existing one is used as it is.
    """
    key_path, cert_path = paths()
    if not (key_path.exists() and cert_path.exists()):
        _generate(key_path, cert_path, common_name or "localhost")
    return _load(str(key_path), str(cert_path), key_path.stat().st_mtime_ns, cert_path.stat().st_mtime_ns)


@lru_cache(maxsize=4)
def _load(key_path: str, cert_path: str, _key_mtime: int, _cert_mtime: int) -> Signer:
    key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise RuntimeError(f"OpenDSR signing key {key_path} is RSA-{key.key_size}; 2048 bits or more needed")
    elif not isinstance(key, ec.EllipticCurvePrivateKey):
        raise RuntimeError(f"OpenDSR signing key {key_path} must be RSA (2048+) or EC")
    pem = Path(cert_path).read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(serialization.Encoding.DER, pub) != key.public_key().public_bytes(
            serialization.Encoding.DER, pub):
        raise RuntimeError(f"OpenDSR certificate {cert_path} does not belong to the key {key_path}")
    self_signed = cert.issuer == cert.subject
    if self_signed:
        log.warning("OpenDSR: signing with the SELF-SIGNED development certificate %s. The OpenDSR spec forbids "
                    "self-signed certificates: in production set LETHE_OPENDSR_KEY_PATH and LETHE_OPENDSR_CERT_PATH "
                    "to a key and a CA-issued certificate for the processor domain.", cert_path)
    return Signer(key=key, cert=cert, cert_pem=pem, self_signed=self_signed)


def _generate(key_path: Path, cert_path: Path, common_name: str) -> None:
    """A development RSA key (0600) and a self-signed certificate, written once even when processes race."""
    private_dir(key_path.parent)
    private_dir(cert_path.parent)
    lock_path = key_path.with_name(key_path.name + ".lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if key_path.exists() and cert_path.exists():
            return
        if key_path.exists() != cert_path.exists():
            raise RuntimeError(f"OpenDSR: found only one of {key_path} and {cert_path}; give both or neither")
        key = rsa.generate_private_key(public_exponent=65537, key_size=get_settings().opendsr_key_bits)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Lethe development processor")])
        now = utcnow()
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=825))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        tmp_key = key_path.with_name(key_path.name + ".tmp")
        fd = os.open(tmp_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
        tmp_cert = cert_path.with_name(cert_path.name + ".tmp")
        tmp_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        tmp_key.replace(key_path)
        tmp_cert.replace(cert_path)
    log.warning("OpenDSR: generated a DEVELOPMENT signing key %s and a SELF-SIGNED certificate %s (CN=%s). "
                "Production needs a CA-issued certificate for the processor domain (LETHE_OPENDSR_KEY_PATH, "
                "LETHE_OPENDSR_CERT_PATH).", key_path, cert_path, common_name)
