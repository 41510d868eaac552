"""Key material for a throw-away control plane: one CA, the API server's serving certificate, an admin
client certificate, and the service-account signing key.

Everything is generated in-process with `cryptography` (no `openssl` shell-outs, no files to clean up
except the ones written into the control plane's own temp folder). TLS keys are ECDSA P-256: they are
generated in microseconds, which matters when a test session starts a control plane on two cores. The
service-account key is RSA because every Kubernetes version and every JWT library accepts RS256.

The admin certificate's organisation is `system:masters`: Kubernetes maps certificate O= fields to
groups, and that group is bound to `cluster-admin` by the API server's bootstrap RBAC policy, so the
admin is allowed everything even though `--authorization-mode=RBAC` is enforced for everyone else.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ADMIN_USER = "e2e-admin"
ADMIN_GROUP = "system:masters"
_VALIDITY = dt.timedelta(days=2)


@dataclass(frozen=True)
class CertPaths:
    """Where `write_certs` put each PEM file."""

    ca_cert: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    sa_key: Path
    sa_pub: Path


def _name(common_name: str, organisation: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organisation:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation))
    return x509.Name(attributes)


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        # Back-dated a little: etcd, Go and Python may disagree about "now" by a second or two.
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
    )


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_certs(folder: Path, service_ip: str) -> CertPaths:
    """Generate all key material into `folder` and return the paths.

    The serving certificate names 127.0.0.1 (where everything connects) and the in-cluster names and
    service IP of the `kubernetes` Service, so that an in-cluster client would verify it too.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("e2e-ca")
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
        .sign(ca_key, hashes.SHA256())
    )

    serving_key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address(service_ip)),
        x509.DNSName("localhost"),
        x509.DNSName("kubernetes"),
        x509.DNSName("kubernetes.default"),
        x509.DNSName("kubernetes.default.svc"),
        x509.DNSName("kubernetes.default.svc.cluster.local"),
    ]
    serving_cert = (
        _builder(_name("kube-apiserver"), ca_name, serving_key.public_key())
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    admin_key = ec.generate_private_key(ec.SECP256R1())
    admin_cert = (
        _builder(_name(ADMIN_USER, ADMIN_GROUP), ca_name, admin_key.public_key())
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    paths = CertPaths(
        ca_cert=folder / "ca.crt",
        serving_cert=folder / "apiserver.crt",
        serving_key=folder / "apiserver.key",
        admin_cert=folder / "admin.crt",
        admin_key=folder / "admin.key",
        sa_key=folder / "sa.key",
        sa_pub=folder / "sa.pub",
    )
    paths.ca_cert.write_bytes(_cert_pem(ca_cert))
    paths.serving_cert.write_bytes(_cert_pem(serving_cert))
    paths.serving_key.write_bytes(_key_pem(serving_key))
    paths.admin_cert.write_bytes(_cert_pem(admin_cert))
    paths.admin_key.write_bytes(_key_pem(admin_key))
    paths.sa_key.write_bytes(_key_pem(sa_key))
    paths.sa_pub.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    for key_path in (paths.serving_key, paths.admin_key, paths.sa_key):
        key_path.chmod(0o600)
    return paths
