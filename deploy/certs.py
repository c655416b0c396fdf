"""Generate a CA, a SuperLink certificate naming every host it is reached by, and SuperNode keys.

    python -m deploy.certs --out certs --host 127.0.0.1 --host superlink --supernodes 3

Writes ca.crt, ca.key, superlink.crt, superlink.key, and supernode-<i>(.pub) key pairs
(ECDSA P-384 in OpenSSH format, as `flwr supernode register` expects). Uses the
`cryptography` package that Flower already depends on, so no openssl binary is needed.
Private keys (and `--secret` files) are readable by their owner alone from the moment they exist,
whatever the umask.

    python -m deploy.certs --secret superexec.secret

writes a random secret that a SuperNode and its SuperExec share (`--superexec-auth-secret-file`).
"""

import argparse
import datetime as dt
import ipaddress
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALID_DAYS = 365


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path`, a file at mode 0600 before any byte of `data` is in it, whatever the umask.

    Writing first and chmod-ing after would leave a key readable by everyone for a moment under the
    usual umask of 022; an existing file (from an older run) is narrowed to 0600 before it is rewritten.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        # O_CREAT's mode applies to new files only, and the umask may have taken the owner's bits.
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey, fmt: serialization.PrivateFormat) -> None:
    write_private(path, key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()))


def make_secret(path: Path) -> Path:
    """A random shared secret for a runtime API (`--superexec-auth-secret-file`), at mode 0600."""
    write_private(path, secrets.token_hex(32).encode())
    return path


def make_tls(out: Path, hosts: list[str]) -> None:
    """ca.crt/ca.key and superlink.crt/superlink.key, the latter valid for every name in `hosts`."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("fedkd CA"))
        .issuer_name(_name("fedkd CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _write_key(out / "ca.key", ca_key, serialization.PrivateFormat.PKCS8)
    (out / "superlink.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(out / "superlink.key", key, serialization.PrivateFormat.PKCS8)


def make_supernode_key(out: Path, name: str) -> tuple[Path, Path]:
    """An ECDSA P-384 key pair for SuperNode authentication: (private key, public key)."""
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = out / name, out / f"{name}.pub"
    out.mkdir(parents=True, exist_ok=True)
    _write_key(private, key, serialization.PrivateFormat.OpenSSH)
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n"
    )
    return private, public


def parser() -> argparse.ArgumentParser:
    """The command line of `python -m deploy.certs`."""
    parser = argparse.ArgumentParser(
        prog="python -m deploy.certs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, help="the folder to write the CA, certificates and keys to")
    parser.add_argument("--host", action="append", help="a name or IP the SuperLink is reached by (repeat)")
    parser.add_argument("--supernodes", type=int, default=0, help="how many SuperNode key pairs to create")
    parser.add_argument("--secret", type=Path, help="write only a shared secret for a runtime API to this file")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Command line: certificates for the given hosts, and key pairs for N SuperNodes."""
    cli = parser()
    args = cli.parse_args(argv)
    if args.secret is not None:
        make_secret(args.secret)
        print(f"wrote a secret to {args.secret} (mode 0600)")
        return
    if args.out is None or not args.host:
        cli.error("--out and at least one --host are required (or --secret alone)")
    make_tls(args.out, args.host)
    for i in range(args.supernodes):
        make_supernode_key(args.out, f"supernode-{i}")
    print(f"wrote certificates for {args.host} and {args.supernodes} SuperNode key pairs to {args.out}")


if __name__ == "__main__":
    main()
