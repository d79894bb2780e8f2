"""Jinja filter `kit.jobqueue.tls_mismatch`: what is wrong between a server's certificate, its
key and the CA its clients trust, as sentences (empty when nothing is). The preflight checks
refuse with it a renewal that would have every client refuse every node at once (a certificate
from another CA), or a server that cannot start (a key of another certificate).

    {{ certificate | kit.jobqueue.tls_mismatch(key, ca_certificate) }}

The certificate may carry intermediates after it; the CA text may hold several certificates.
Nothing of the key is ever part of the answer."""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _public(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


Certs = list[x509.Certificate]


def _reaches(cert: x509.Certificate, intermediates: Certs, roots: Certs) -> bool:
    """Whether some path from `cert` through the intermediates (each used once, in any order:
    a cross-signed one may come twice) ends at one of the roots."""
    if any(_issued_by(cert, root) for root in roots):
        return True
    return any(
        _reaches(i, [o for o in intermediates if o is not i], roots)
        for i in intermediates
        if _issued_by(cert, i)
    )


def tls_mismatch(certificate: str, key: str, ca_certificate: str) -> list[str]:
    problems = []
    try:
        chain = x509.load_pem_x509_certificates(certificate.encode())
    except ValueError:
        return ["the certificate cannot be read (not PEM)"]
    try:
        authorities = x509.load_pem_x509_certificates(ca_certificate.encode())
    except ValueError:
        return ["the CA certificate cannot be read (not PEM)"]
    try:
        private = serialization.load_pem_private_key(key.encode(), password=None)
    except (ValueError, TypeError):
        problems.append("the key cannot be read (not PEM, or protected by a password)")
    else:
        if _public(private.public_key()) != _public(chain[0].public_key()):
            problems.append("the key is not the certificate's (its public key differs)")
    # Up from the server's certificate through the intermediates sent with it, to a CA.
    if _reaches(chain[0], chain[1:], authorities):
        return problems
    names = ", ".join(a.subject.rfc4514_string() for a in authorities)
    problems.append(
        f"the certificate ({chain[0].subject.rfc4514_string()}, issued by "
        f"{chain[0].issuer.rfc4514_string()}) was not signed by the CA ({names})"
    )
    return problems


class FilterModule:
    def filters(self) -> dict:
        return {"tls_mismatch": tls_mismatch}
