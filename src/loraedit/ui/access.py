"""Who may use the web app: logins (Gradio's own auth) and the rule that a networked app has them.

`--auth USER:PASSWORD` (repeatable) or `--auth-file FILE` (one `USER:PASSWORD` a line, `#` comments) give
the logins. An app listening on anything but the loopback interface refuses to start without a login,
unless `--insecure-no-auth` says the network in between is trusted. Passwords are compared by Gradio;
they never appear in a message (a bad line is named by its number).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})


@dataclass(frozen=True)
class Access:
    """How the app is reached: the address it listens on and the logins it asks for."""

    host: str = "127.0.0.1"
    logins: tuple[tuple[str, str], ...] = ()
    insecure_no_auth: bool = False


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine only (127.0.0.0/8, ::1, localhost); 0.0.0.0 and any name are not."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_login(text: str, where: str = "--auth") -> tuple[str, str]:
    """`USER:PASSWORD` (the password may contain ':'); refused when either part is empty."""
    user, sep, password = text.partition(":")
    if not sep or not user.strip() or not password:
        raise InputError(f"{where}: give USER:PASSWORD (both non-empty)")
    return user.strip(), password


def read_auth_file(path: Path) -> tuple[tuple[str, str], ...]:
    """The logins in an auth file: one USER:PASSWORD a line; blank lines and `#` comments skipped."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise InputError(f"--auth-file {path}: cannot read it ({exc.strerror or exc})") from None
    logins = tuple(parse_login(line.strip(), f"--auth-file {path} line {n}") for n, line in enumerate(lines, 1)
                   if line.strip() and not line.lstrip().startswith("#"))
    if not logins:
        raise InputError(f"--auth-file {path} has no USER:PASSWORD line")
    return logins


def check_access(access: Access) -> None:
    """Refuse a networked app without logins (unless explicitly insecure)."""
    if not is_loopback(access.host) and not access.logins and not access.insecure_no_auth:
        raise InputError(f"--host {access.host} opens the app to the network, which needs a login: add "
                         "--auth USER:PASSWORD or --auth-file FILE (or --insecure-no-auth on a trusted network)")
