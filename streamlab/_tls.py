"""A throwaway self-signed certificate for loopback TLS (nginx's ``listen ... ssl http2``).

    >>> cert, key = make_self_signed("/tmp/streamlab-nginx-xyz")   # cert.pem, key.pem (0600)
    >>> ctx = client_context(cert)                                 # httpx.Client(verify=ctx, http2=True)

The certificate is its own CA (``basicConstraints CA:TRUE``), valid for two days,
``CN=127.0.0.1`` with SubjectAltNames ``IP:127.0.0.1``, ``IP:::1`` and ``DNS:localhost``:
a client that trusts ``cert.pem`` (``ca_path``) verifies ``https://127.0.0.1:PORT``
normally, hostname check included. It is made with the ``cryptography`` package
when it is installed, else with the ``openssl`` command (both ECDSA P-256), and is
written where the caller says (nginx's private temp dir, removed when nginx stops).
Nothing leaves loopback: it is for tests and notebooks, never for a real server.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import ssl
import subprocess

__all__ = ["make_self_signed", "client_context", "tls_backend", "spki_fingerprint"]

HOSTS = ("127.0.0.1", "::1", "localhost")


def tls_backend() -> str | None:
    """What makes the certificate: ``"cryptography"``, ``"openssl"`` or None (neither available)."""
    try:
        import cryptography  # noqa: F401
    except ImportError:
        return "openssl" if shutil.which("openssl") else None
    return "cryptography"


def _write(path: str, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _with_cryptography(cert_path: str, key_path: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "streamlab loopback")])
    now = datetime.datetime.now(datetime.timezone.utc)
    sans = [x509.IPAddress(ipaddress.ip_address(h)) for h in HOSTS[:2]] + [x509.DNSName(HOSTS[2])]
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    _write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _with_openssl(cert_path: str, key_path: str) -> None:
    san = "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost"
    cmd = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
           "-keyout", key_path, "-out", cert_path, "-days", "2", "-subj", "/CN=127.0.0.1/O=streamlab loopback",
           "-addext", san, "-addext", "basicConstraints=critical,CA:TRUE"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"openssl could not make a certificate: {done.stderr.strip()}")
    os.chmod(key_path, 0o600)


def make_self_signed(directory: str) -> tuple[str, str]:
    """Write ``cert.pem`` and ``key.pem`` into ``directory``; return their paths (see the module docstring)."""
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    backend = tls_backend()
    if backend == "cryptography":
        _with_cryptography(cert_path, key_path)
    elif backend == "openssl":
        _with_openssl(cert_path, key_path)
    else:
        raise RuntimeError("no way to make a certificate: install the cryptography package or openssl")
    return cert_path, key_path


def client_context(ca_path: str, *, http2: bool = True) -> ssl.SSLContext:
    """An ``ssl.SSLContext`` that trusts only ``ca_path`` (hostname checked), offering h2 then http/1.1."""
    ctx = ssl.create_default_context(cafile=ca_path)
    ctx.set_alpn_protocols(["h2", "http/1.1"] if http2 else ["http/1.1"])
    return ctx


def spki_fingerprint(cert_path: str) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of the certificate: what Chromium's
    ``--ignore-certificate-errors-spki-list=<this>`` takes to trust exactly this key (a loopback
    test then needs no blanket ``--ignore-certificate-errors``)."""
    import base64
    import hashlib

    with open(cert_path, "rb") as fh:
        pem = fh.read()
    der = ssl.PEM_cert_to_DER_cert(pem.decode("ascii"))
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        pub = subprocess.run(["openssl", "x509", "-pubkey", "-noout"], input=pem, capture_output=True,
                             timeout=30, check=True).stdout
        spki = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub, capture_output=True,
                              timeout=30, check=True).stdout
    else:
        spki = x509.load_der_x509_certificate(der).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")
