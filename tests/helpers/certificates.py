"""Certificates for the TLS tests, made at run time (with ``cryptography``) into a test's own
directory: no private key is ever committed.

A test makes a CA (``Authority.make``), then has it issue a server certificate valid for the
loopback addresses (``issue_server``) or a client certificate (``issue_client``); another CA made
the same way stands for one the gateway or the caller does not trust. Keys are P-256: quick to
make, and both OpenSSL (REST, the ``ssl`` module) and BoringSSL (grpc) take them.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: What the server certificate is valid for: what the tests (and the CLI) dial.
LOOPBACK_NAMES = ("localhost",)
LOOPBACK_IPS = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, as PEM files (and bytes, for grpc's credentials)."""

    cert_file: Path
    key_file: Path

    @property
    def cert_pem(self) -> bytes:
        return self.cert_file.read_bytes()

    @property
    def key_pem(self) -> bytes:
        return self.key_file.read_bytes()


@dataclass(frozen=True)
class Authority:
    """A CA: its certificate as a PEM file, and the key it signs with (kept in memory)."""

    name: str
    directory: Path
    cert_file: Path
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert_file.read_bytes()

    @classmethod
    def make(cls, directory: Path, name: str) -> Authority:
        """A self-signed CA named ``name``; its certificate is ``directory/<name>.pem``."""
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(f"{name} test CA")
        certificate = (
            _builder(subject, subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        cert_file = directory / f"{name}.pem"
        cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return cls(name, directory, cert_file, certificate, key)

    def issue_server(self, name: str = "server") -> Issued:
        """A server certificate for localhost, 127.0.0.1 and ::1."""
        alternative: list[x509.GeneralName] = [x509.DNSName(n) for n in LOOPBACK_NAMES]
        alternative += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in LOOPBACK_IPS]
        return self._issue(name, ExtendedKeyUsageOID.SERVER_AUTH, alternative)

    def issue_client(self, name: str = "client") -> Issued:
        """A client certificate (for mutual TLS), its subject ``name``."""
        return self._issue(name, ExtendedKeyUsageOID.CLIENT_AUTH, [])

    def _issue(
        self, name: str, usage: x509.ObjectIdentifier, alternative: list[x509.GeneralName]
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            _builder(_name(name), self.certificate.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        if alternative:
            builder = builder.add_extension(x509.SubjectAlternativeName(alternative), False)
        certificate = builder.sign(self.key, hashes.SHA256())
        stem = f"{self.name}-{name}"
        cert_file = self.directory / f"{stem}.pem"
        key_file = self.directory / f"{stem}-key.pem"
        cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(private_pem(key))
        key_file.chmod(0o600)
        return Issued(cert_file, key_file)


def private_pem(key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> bytes:
    """``key`` as PKCS#8 PEM: unencrypted, or encrypted with ``password``."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.NoEncryption()
        if password is None
        else serialization.BestAvailableEncryption(password)
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def encrypted_key_file(path: Path, password: bytes = b"secret") -> Path:
    """A fresh private key, encrypted with ``password``, written to ``path``."""
    path.write_bytes(private_pem(ec.generate_private_key(ec.SECP256R1()), password))
    return path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


@dataclass(frozen=True)
class Pki:
    """The certificates the TLS tests use, all made under one directory.

    ``server`` is the gateway's (signed by ``server_ca``); ``client`` is a caller's, signed by
    ``client_ca``, the CA mutual TLS checks callers against; ``other_ca`` is trusted by no one,
    and ``rogue`` is a client certificate it signed.
    """

    server_ca: Authority
    server: Issued
    client_ca: Authority
    client: Issued
    other_ca: Authority
    rogue: Issued

    @classmethod
    def make(cls, directory: Path) -> Pki:
        server_ca = Authority.make(directory, "server-ca")
        client_ca = Authority.make(directory, "client-ca")
        other_ca = Authority.make(directory, "other-ca")
        return cls(
            server_ca,
            server_ca.issue_server(),
            client_ca,
            client_ca.issue_client(),
            other_ca,
            other_ca.issue_client("rogue"),
        )
