"""Importing aiohttp without reading the system's CA bundle on the way to listening.

aiohttp builds its two default client TLS contexts when it is imported, and each one reads
and parses the whole CA bundle file (about 18 ms apiece in the runtime image: a fifth of
the runtime's start). OpenSSL also looks CAs up in the hashed CA directory, one file per
certificate, read when a handshake needs it. Without a CA file while aiohttp is imported,
its contexts trust the same CAs through that directory only: verification is unchanged,
and only a function that makes TLS calls pays for reading the certificates it needs.
"""

import os
import ssl
from collections.abc import Iterator
from contextlib import contextmanager

CA_FILE_ENV = "SSL_CERT_FILE"
# Nothing at this path: OpenSSL skips a default CA file it cannot open.
NO_CA_FILE = "/nonexistent/kapal-no-ca-file"


def hashed_ca_directory() -> str | None:
    """The CA directory OpenSSL looks certificates up in, if it holds hashed links."""
    capath = ssl.get_default_verify_paths().capath
    if capath is None:
        return None
    try:
        # Links are named after the subject's hash: `5ad8a5d6.0`.
        if any(name.endswith(".0") for name in os.listdir(capath)):
            return capath
    except OSError:
        pass
    return None


@contextmanager
def ca_file_deferred() -> Iterator[None]:
    """Within it, default TLS contexts trust the hashed CA directory, not the CA file.

    Left as it is when the function chose a CA file of its own (SSL_CERT_FILE), or when
    there is no hashed directory to verify with.
    """
    if CA_FILE_ENV in os.environ or hashed_ca_directory() is None:
        yield
        return
    os.environ[CA_FILE_ENV] = NO_CA_FILE
    try:
        yield
    finally:
        del os.environ[CA_FILE_ENV]
