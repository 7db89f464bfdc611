"""TLS material and SuperNode keys for a local deployment (``cryptography``).

A fresh CA and a server certificate for ``127.0.0.1``/``localhost`` signed by it
(the SuperLink serves its APIs over HTTPS with them; SuperNodes and the ``flwr``
CLI verify them with the CA), and one EC P-384 key pair per SuperNode for
SuperNode authentication.  Private keys are written with mode 0600.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CertPaths", "generate_certificates", "generate_node_keys"]


@dataclass(frozen=True)
class CertPaths:
    """Where a deployment's TLS material lies.

    Parameters
    ----------
    ca
        CA certificate (PEM): what clients trust.
    cert
        Server certificate (PEM) for 127.0.0.1 / localhost, signed by the CA.
    key
        Server private key (PEM, PKCS#8).
    """

    ca: Path
    cert: Path
    key: Path


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, created with mode 0600 (parents created as needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def generate_certificates(directory: str | Path, *, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
                          days: int = 30) -> CertPaths:
    """A self-signed CA and a server certificate for ``hosts`` signed by it.

    Parameters
    ----------
    directory
        Where ``ca.crt``, ``server.crt`` and ``server.key`` (mode 0600) are written.
    hosts
        The server certificate's names: IP addresses or DNS names (the first is its common name).
    days
        Validity of both certificates.

    Returns
    -------
    CertPaths
        The three files.  The CA's private key is used once and never written.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.timezone.utc)
    not_before, not_after = now - _dt.timedelta(hours=1), now + _dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedrec deploy local CA"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedrec")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    san: list[x509.GeneralName] = []
    for h in hosts:
        try:
            san.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            san.append(x509.DNSName(h))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                     crl_sign=False, content_commitment=False, data_encipherment=False,
                                     key_agreement=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = CertPaths(ca=d / "ca.crt", cert=d / "server.crt", key=d / "server.key")
    paths.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(paths.key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    return paths


def generate_node_keys(directory: str | Path, n: int) -> list[tuple[Path, Path]]:
    """One EC P-384 key pair per SuperNode, in OpenSSH format (what Flower reads).

    Parameters
    ----------
    directory
        Where ``node-P`` (private, mode 0600) and ``node-P.pub`` are written.
    n
        Number of SuperNodes (``P`` = 0 .. n-1).

    Returns
    -------
    list of (Path, Path)
        ``(private key, public key)`` of each SuperNode, in node order.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for p in range(n):
        k = ec.generate_private_key(ec.SECP384R1())
        priv, pub = d / f"node-{p}", d / f"node-{p}.pub"
        _write_private(priv, k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                             serialization.NoEncryption()))
        pub.write_bytes(k.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                    serialization.PublicFormat.OpenSSH) + b" fedrec-node-%d\n" % p)
        out.append((priv, pub))
    return out
