"""A throwaway certificate authority for the TLS tests (the `cryptography` package): a CA, server
certificates for 127.0.0.1 and client certificates, written as PEM files the way cert-manager
leaves them in a mounted Secret (tls.crt, tls.key, ca.crt)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass
class Issued:
    cert_pem: bytes
    key_pem: bytes
    serial: int


class CA:
    def __init__(self, cn: str = "sd-test-ca") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, cn: str, *, client: bool = False) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        serial = x509.random_serial_number()
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if not client:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key), serial)

    def client_context(
        self, client: Issued | None = None, workdir: Path | None = None
    ) -> ssl.SSLContext:
        """A client's context that trusts this CA (and presents `client`, written to workdir)."""
        context = ssl.create_default_context(cadata=self.pem.decode())
        if client is not None:
            assert workdir is not None
            cert, key = write_pair(workdir / f"client-{client.serial}", client)
            context.load_cert_chain(cert, key)
        return context


def write_pair(directory: Path, issued: Issued) -> tuple[str, str]:
    """Write tls.crt and tls.key into `directory`, each replaced atomically (rename)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in (("tls.crt", issued.cert_pem), ("tls.key", issued.key_pem)):
        tmp = directory / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, directory / name)
        paths.append(str(directory / name))
    return paths[0], paths[1]


def serial_of(der: bytes) -> int:
    return x509.load_der_x509_certificate(der).serial_number
