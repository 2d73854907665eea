"""TLS for both edges: the servers' certificate and key, the client CA of mutual TLS, and the
files the CLI client presents.

Every file is read and checked before anything listens or dials, so that a wrong one is a single
line naming it (``tls_key_file: /etc/gw/key.pem is not the private key of ...``) rather than a
handshake that fails later, or OpenSSL's "PEM lib". No message quotes a file's contents: a key
file's are a secret, and a wrong file may be one. An encrypted private key is refused rather
than prompted for (grpc takes the key's PEM as it is).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Literal

#: Which of the files a ``PemError`` is about: the certificate (chain), its private key, or a CA.
Role = Literal["cert", "key", "ca"]


class PemError(ValueError):
    """A certificate, key or CA file that cannot be used; ``role`` says which it is."""

    def __init__(self, role: Role, message: str) -> None:
        super().__init__(message)
        self.role = role


@dataclass(frozen=True)
class ServerTls:
    """What both servers need to serve TLS, read from the files once.

    ``client_ca`` set means mutual TLS: a caller must present a certificate it signed.
    """

    certificate_chain: bytes
    private_key: bytes
    client_ca: bytes | None
    #: REST's (aiohttp's): TLS 1.2 or later, and with ``client_ca`` a client certificate required.
    ssl_context: ssl.SSLContext

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None


def load_server_tls(cert_file: str, key_file: str, client_ca_file: str | None) -> ServerTls:
    """Reads and checks the files; ``PemError`` names the first that cannot be used."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    chain, key = key_pair(cert_file, key_file, context)
    client_ca = None
    if client_ca_file is not None:
        client_ca = certificates(client_ca_file, "ca")
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=client_ca.decode("latin-1"))
    return ServerTls(chain, key, client_ca, context)


def read(path: str, role: Role) -> bytes:
    """The file's bytes; ``PemError`` if it cannot be read."""
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise PemError(role, f"cannot read {path}: {exc.strerror or exc}") from None


def certificates(path: str, role: Role) -> bytes:
    """The file's bytes, once they are known to hold PEM certificates (a CA, a chain)."""
    data = read(path, role)
    try:
        # latin-1 reads any bytes: what is outside the PEM blocks (comments) is not looked at.
        text = data.decode("latin-1")
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=text)
    except (ValueError, ssl.SSLError):
        # Never chained: the exception would carry the text.
        raise PemError(role, f"{path} holds no readable PEM certificate") from None
    return data


def key_pair(
    cert_file: str, key_file: str, context: ssl.SSLContext | None = None
) -> tuple[bytes, bytes]:
    """The certificate chain's and the private key's bytes, once they are known to belong
    together (loaded into ``context``, if given, to check that)."""
    chain = certificates(cert_file, "cert")
    key = read(key_file, "key")
    _load_chain(context or ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), cert_file, key_file)
    return chain, key


class _Encrypted(Exception):
    pass


def _no_password() -> str:
    raise _Encrypted


def _load_chain(context: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    # The certificate was checked first, so a failure here is the key's.
    try:
        context.load_cert_chain(cert_file, key_file, password=_no_password)
    except _Encrypted:
        raise PemError(
            "key", f"{key_file} is an encrypted private key; give it unencrypted"
        ) from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            message = f"{key_file} is not the private key of the certificate in {cert_file}"
        else:
            message = f"{key_file} holds no readable PEM private key"
        raise PemError("key", message) from None
    except OSError as exc:
        raise PemError("key", f"cannot read {key_file}: {exc.strerror or exc}") from None
