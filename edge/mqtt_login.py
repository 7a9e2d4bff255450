"""How a command-line tool reaches an MQTT broker: its address and its login.

One definition for ``lineqc edge command``, ``lineqc fleet publish|deploy|status|watch`` and
``lineqc review collect``: ``add_login_args`` gives a parser the options, ``MqttLogin.from_args``
reads and checks them (LineqcError naming the option and its value), ``MqttLogin.apply`` sets
them on a paho client. The device itself reads the same settings from its config file
(``mqtt:`` in edge/config.py), not from these options.

* ``--broker``: ``mqtt://HOST:PORT``, ``mqtts://HOST:PORT`` (TLS; port 8883 when left out)
  or a bare ``HOST:PORT`` (plain MQTT).
* ``--username`` and ``--password-file``: the password is read from a file, never taken on
  the command line (where ``ps`` and the shell history would show it).
* ``--tls-ca``: the CA that signed the broker's certificate (default: the system's CAs).
  ``--tls-cert`` with ``--tls-key``: the client certificate, for a broker with
  ``require_certificate`` (firmware_config/mosquitto-tls.conf takes its CN as the username
  and firmware_config/mosquitto.acl grants topics by it). Any of the three means TLS, even
  with an ``mqtt://`` address. The broker's certificate is always verified.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lineqc.errors import LineqcError

MQTT_PORT, MQTTS_PORT = 1883, 8883
BROKER_FORMS = "mqtt://HOST:PORT, mqtts://HOST:PORT or HOST:PORT"


@dataclasses.dataclass(frozen=True)
class BrokerUrl:
    host: str
    port: int
    tls: bool

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerUrl:
    """``mqtt://HOST[:PORT]``, ``mqtts://HOST[:PORT]`` (TLS) or ``HOST:PORT`` (plain MQTT);
    LineqcError naming the URL (with any password in it masked)."""
    shown = repr(re.sub(r"//([^/@:]*):[^/@]*@", r"//\1:***@", url))  # never echo a password
    expected = f"expected {BROKER_FORMS}"
    bare = "://" not in url
    try:
        parts = urlsplit(f"mqtt://{url}" if bare else url)
        port = parts.port
    except ValueError as exc:
        raise LineqcError(f"--broker {shown}: {exc} ({expected})") from None
    if parts.scheme not in ("mqtt", "mqtts"):
        raise LineqcError(f"--broker {shown}: unknown scheme ({expected})")
    if parts.username is not None or parts.password is not None:
        raise LineqcError(
            f"--broker {shown}: give the user as --username and the password in --password-file"
        )
    if (
        not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or (bare and port is None)  # a lone word is more likely a mistake than a host
    ):
        raise LineqcError(f"--broker {shown}: not a broker address ({expected})")
    tls = parts.scheme == "mqtts"
    return BrokerUrl(parts.hostname, port or (MQTTS_PORT if tls else MQTT_PORT), tls)


def read_password(path: str | Path | None) -> str | None:
    """The first line of ``path`` (its line ending dropped); None without a file."""
    if path is None:
        return None
    try:
        return Path(path).read_text().rstrip("\r\n")
    except OSError as exc:
        raise LineqcError(f"--password-file {path}: {exc.strerror}") from None


@dataclasses.dataclass(frozen=True)
class MqttLogin:
    """Where the broker is and how to log in to it (from ``add_login_args``' options)."""

    broker: BrokerUrl
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> MqttLogin:
        """The options of ``add_login_args``, checked: the broker address, the TLS files
        (each must exist; the certificate and its key go together) and the password file."""
        broker = parse_broker_url(args.broker)
        files = {}
        for option in ("tls_ca", "tls_cert", "tls_key"):
            path = getattr(args, option, None)
            if path is not None:
                path = str(path)
                if not Path(path).is_file():
                    raise LineqcError(f"--{option.replace('_', '-')} {path}: no such file")
            files[option] = path
        if (files["tls_cert"] is None) != (files["tls_key"] is None):
            given = "--tls-cert" if files["tls_cert"] is not None else "--tls-key"
            raise LineqcError(
                f"{given} {files['tls_cert'] or files['tls_key']}: --tls-cert and --tls-key go "
                "together (the client certificate and its private key)"
            )
        if any(f is not None for f in files.values()) and not broker.tls:  # they mean TLS
            broker = BrokerUrl(broker.host, broker.port, True)
        return cls(
            broker,
            username=getattr(args, "username", None),
            password=read_password(getattr(args, "password_file", None)),
            **files,
        )

    def apply(self, client: Any) -> None:
        """Set the login on a paho client (before it connects)."""
        if self.username is not None or self.password is not None:
            client.username_pw_set(self.username or "", self.password)
        if self.broker.tls:  # the broker's certificate is verified, always
            client.tls_set(
                ca_certs=self.tls_ca,
                certfile=self.tls_cert,
                keyfile=self.tls_key,
                cert_reqs=ssl.CERT_REQUIRED,
            )

    def __str__(self) -> str:
        who = f" as {self.username}" if self.username else ""
        cert = f" with the certificate {self.tls_cert}" if self.tls_cert else ""
        return f"{self.broker}{who}{cert}"


def add_login_args(
    parser: argparse.ArgumentParser, *, default_broker: str | None = None, who: str = "this tool"
) -> None:
    """``--broker`` (required without ``default_broker``), ``--username``,
    ``--password-file``, ``--tls-ca``, ``--tls-cert`` and ``--tls-key``. ``who`` names the
    client in the help (its certificate's CN is its MQTT user)."""
    forms = "mqtt://HOST:PORT, mqtts://HOST:PORT (TLS; default port 8883) or HOST:PORT"
    if default_broker is None:
        parser.add_argument("--broker", required=True, metavar="URL", help=forms)
    else:
        parser.add_argument(
            "--broker",
            default=default_broker,
            metavar="URL",
            help=f"{forms} (default: %(default)s)",
        )
    parser.add_argument(
        "--username",
        default=None,
        help="MQTT user name (default: none; a broker with use_identity_as_username takes "
        "the client certificate's CN)",
    )
    parser.add_argument(
        "--password-file",
        default=None,
        metavar="FILE",
        help="file holding the MQTT password (never on the command line; default: none)",
    )
    parser.add_argument(
        "--tls-ca",
        default=None,
        metavar="PEM",
        help="CA certificate that signed the broker's: connect with TLS (default: the "
        "system's CAs when TLS is on)",
    )
    parser.add_argument(
        "--tls-cert",
        default=None,
        metavar="PEM",
        help=f"{who}'s client certificate, for a broker that requires one "
        "(require_certificate; its CN is the MQTT user with use_identity_as_username, and "
        "firmware_config/mosquitto.acl grants topics by it); needs --tls-key; implies TLS "
        "(default: none)",
    )
    parser.add_argument(
        "--tls-key",
        default=None,
        metavar="PEM",
        help="the client certificate's private key (default: none)",
    )
