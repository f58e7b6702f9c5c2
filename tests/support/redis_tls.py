"""A redis-server of the test's own that listens on TLS only (``--port 0``),
with a certificate from a throwaway CA generated here, and one ACL user (the
default user is disabled), as ElastiCache in-transit encryption and RBAC
have it.  Started by the test, stopped by PID."""
from __future__ import annotations

import datetime
import ipaddress
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.servers import free_port, stop_process, wait_for

USER = "sessionsync"
# an RBAC password as generated ones look: characters a URL must escape
PASSWORD = "s3cret/p@ss:word#1"


@dataclass(frozen=True)
class TlsRedis:
    port: int
    ca_file: Path

    def url(self, password: str = PASSWORD, ca_file: Path | None = None) -> str:
        query = "" if ca_file is None else f"?ssl_ca_certs={quote(str(ca_file))}"
        return f"rediss://{USER}:{quote(password, safe='')}@127.0.0.1:{self.port}/0{query}"


def write_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A self-signed CA and a server certificate for 127.0.0.1 / localhost."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sessionsync test CA")])
    ca_cert = (x509.CertificateBuilder()
               .subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=True, crl_sign=True,
                                            encipher_only=False, decipher_only=False),
                              critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                              critical=False)
               .sign(ca_key, hashes.SHA256()))
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
                   .issuer_name(ca_name)
                   .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([
                       x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                                  critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       ca_key.public_key()), critical=False)
                   .sign(ca_key, hashes.SHA256()))
    ca_file, cert_file, key_file = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(server_key.private_bytes(serialization.Encoding.PEM,
                                                  serialization.PrivateFormat.TraditionalOpenSSL,
                                                  serialization.NoEncryption()))
    key_file.chmod(0o600)
    return ca_file, cert_file, key_file


@contextmanager
def running_tls_redis(workdir: Path) -> Iterator[TlsRedis]:
    ca_file, cert_file, key_file = write_certificates(workdir)
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", "0", "--tls-port", str(port),
         "--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file),
         "--tls-ca-cert-file", str(ca_file), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--dir", str(workdir),
         # RBAC as ElastiCache has it: no anonymous default user, one app user
         "--user", "default", "off",
         "--user", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError("exited")
            return redis.Redis(port=port, ssl=True, ssl_ca_certs=str(ca_file), username=USER,
                               password=PASSWORD, socket_timeout=2).ping()
        try:
            wait_for(ready, 30, f"TLS redis-server on {port}")
        except TimeoutError:
            proc.kill()
            output = proc.communicate(timeout=5)[0].decode(errors="replace")
            pytest.fail(f"redis-server with TLS did not start (built without TLS?):\n{output[-2000:]}")
        yield TlsRedis(port, ca_file)
    finally:
        stop_process(proc)
