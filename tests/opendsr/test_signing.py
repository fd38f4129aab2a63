"""The processor key and certificate: development pair on first use, configured CA-issued pairs, refusals."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from app.db import utcnow
from app.opendsr import signing


def _reset() -> None:
    from app.settings import get_settings

    get_settings.cache_clear()
    signing._load.cache_clear()


def _pem_key(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _issue(key, issuer_key, cn: str, issuer_cn: str) -> x509.Certificate:  # noqa: ANN001
    now = utcnow()
    return (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
            .sign(issuer_key, hashes.SHA256()))


def test_development_pair_is_generated_once_and_signs(sqlite_env: dict[str, str]) -> None:
    _reset()
    s = signing.signer("lethe.example")
    key_path, cert_path = signing.paths()
    assert key_path.parent == Path(sqlite_env["LETHE_DATA_DIR"]).resolve() / "opendsr"
    assert oct(os.stat(key_path).st_mode & 0o777) == "0o600"
    assert s.self_signed and s.common_name == "lethe.example" and s.key.key_size >= 2048
    body = b'{"request_status":"completed"}'
    sig = s.sign(body)
    assert signing.verify(s.cert_pem, body, sig)
    assert not signing.verify(s.cert_pem, body + b" ", sig)
    assert not signing.verify(s.cert_pem, body, "not base64!")
    again = signing.signer("other.example")  # existing files are used as they are
    assert again.cert_pem == s.cert_pem and again.common_name == "lethe.example"


def test_configured_ca_issued_pair_is_used(sqlite_env: dict[str, str], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    ca = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "k.pem").write_bytes(_pem_key(leaf))
    cert = _issue(leaf, ca, "processor.example", "Example CA")
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    monkeypatch.setenv("LETHE_OPENDSR_KEY_PATH", str(tmp_path / "k.pem"))
    monkeypatch.setenv("LETHE_OPENDSR_CERT_PATH", str(tmp_path / "c.pem"))
    _reset()
    s = signing.signer()
    assert not s.self_signed and s.common_name == "processor.example"
    assert signing.verify(s.cert_pem, b"x", s.sign(b"x"))
    assert not (Path(sqlite_env["LETHE_DATA_DIR"]) / "opendsr" / "key.pem").exists()

    # an EC key a CA issued signs with ECDSA-SHA256
    eck = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "k.pem").write_bytes(_pem_key(eck))
    (tmp_path / "c.pem").write_bytes(_issue(eck, ca, "processor.example", "Example CA").public_bytes(
        serialization.Encoding.PEM))
    _reset()
    s = signing.signer()
    assert signing.verify(s.cert_pem, b"x", s.sign(b"x"))


def test_bad_pairs_are_refused(sqlite_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    monkeypatch.setenv("LETHE_OPENDSR_KEY_PATH", str(tmp_path / "k.pem"))
    monkeypatch.setenv("LETHE_OPENDSR_CERT_PATH", str(tmp_path / "c.pem"))
    (tmp_path / "k.pem").write_bytes(_pem_key(small))
    (tmp_path / "c.pem").write_bytes(_issue(small, small, "a", "a").public_bytes(serialization.Encoding.PEM))
    _reset()
    with pytest.raises(RuntimeError, match="2048"):
        signing.signer()
    (tmp_path / "k.pem").write_bytes(_pem_key(other))  # the certificate is of another key
    _reset()
    with pytest.raises(RuntimeError, match="does not belong"):
        signing.signer()
    (tmp_path / "c.pem").unlink()  # half a pair is a mistake, never silently replaced
    _reset()
    with pytest.raises(RuntimeError, match="only one"):
        signing.signer()
