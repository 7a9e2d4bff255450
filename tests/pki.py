"""A throwaway PKI for the MQTT TLS tests, made with ``cryptography``: a CA, a server
certificate for the loopback broker and client certificates whose CN is the identity
Mosquitto takes as the username (``use_identity_as_username``)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Identity:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    folder: Path
    ca: Path  # the CA certificate (PEM): what clients and the broker trust
    ca_key: ec.EllipticCurvePrivateKey

    def issue(self, cn: str, server: bool = False, ca: Pki | None = None) -> Identity:
        """A certificate for ``cn`` signed by this CA (or ``ca``), written as CN.crt/CN.key."""
        signer = ca or self
        ca_cert = x509.load_pem_x509_certificate(signer.ca.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            _builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]), ca_cert.subject)
            .public_key(key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(signer.ca_key, hashes.SHA256())
        ident = Identity(self.folder / f"{cn}.crt", self.folder / f"{cn}.key")
        ident.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        ident.key.write_bytes(_pem(key))
        ident.key.chmod(0o600)
        return ident


def make_ca(folder: Path, name: str = "lineqc test CA") -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        _builder(subject, subject)
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .sign(key, hashes.SHA256())
    )
    path = folder / f"{name.replace(' ', '-')}.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Pki(folder, path, key)


def _builder(subject: x509.Name, issuer: x509.Name) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class Fleet:
    """A CA, the broker's certificate and one client certificate per name (its CN)."""

    pki: Pki
    server: Identity
    clients: dict[str, Identity]

    @property
    def ca(self) -> Path:
        return self.pki.ca

    def paho_tls(self, name: str) -> dict[str, str]:
        """paho's ``tls_set`` arguments for client ``name``."""
        ident = self.clients[name]
        return {"ca_certs": str(self.ca), "certfile": str(ident.cert), "keyfile": str(ident.key)}


def make_fleet(folder: Path, *names: str) -> Fleet:
    pki = make_ca(folder)
    server = pki.issue("broker", server=True)
    return Fleet(pki, server, {name: pki.issue(name) for name in names})
