#!/usr/bin/env python
"""Write a safe-by-default jupyter_server config for JupyterLab on a remote GPU server.

    python 01-peft-setup/jupyter_server_setup.py                  # localhost:8888, reached through an SSH tunnel
    python 01-peft-setup/jupyter_server_setup.py --ip 0.0.0.0 --certfile cert.pem --keyfile key.pem   # public + TLS

The password is read without echo (getpass), or from the JUPYTER_PASSWORD environment variable for automation;
there is deliberately no password option, so it never lands in the shell history or in `ps` output. Only its
argon2 hash is written. The config (jupyter_server_config.json in --config-dir, by default ~/.jupyter) keeps:
the server on localhost unless a TLS certificate and key are given, no `allow_origin='*'`, XSRF checks on,
no browser opened, no access token (a password is required instead), and no port hopping. Unsafe combinations
(an empty or short password, a public address without TLS, missing certificate files) and bad paths (a --config-dir
or --root-dir that is a file or lies under one, a --root-dir that does not exist) are refused, before the password
is asked for, with one line and exit status 2. Loopback addresses count as local in every form (localhost, 127.1,
127.0.0.1, ::1).
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import json
import os
import re
import socket
import ssl
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from utils.checks import check_folder
from utils.errors import CourseError

PASSWORD_ENV = "JUPYTER_PASSWORD"
MIN_PASSWORD_LENGTH = 8
CONFIG_NAME = "jupyter_server_config.json"
REFUSED_EXIT = 2


class UnsafeSetup(Exception):
    """A setup the script refuses to write, with the reason and what to do instead."""


def is_local_address(ip: str) -> bool:
    """True for addresses only this machine can reach: localhost, 127.0.0.0/8 in any form the OS accepts (127.1,
    0x7f.1, 2130706433), ::1 (also as [::1] or ::ffff:127.0.0.1); '', 0.0.0.0 and host names count as public."""
    host = ip.strip().removeprefix("[").removesuffix("]").lower()
    if host in ("localhost", "localhost."):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:  # inet_aton's short forms (127.1), which the server's resolver accepts too; else a name
        if not re.fullmatch(r"[0-9a-fx.]+", host):
            return False
        try:
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def check_password(password: str) -> str:
    """Refuse an empty or short password; return it unchanged otherwise."""
    if not password.strip():
        raise UnsafeSetup("the password is empty: anyone who reaches the port could run code as you. Choose a password")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UnsafeSetup(f"the password has {len(password)} characters; use at least {MIN_PASSWORD_LENGTH}")
    return password


def read_password(environ: Mapping[str, str] = os.environ) -> str:
    """The password from $JUPYTER_PASSWORD if set, else typed twice at the terminal without echo."""
    if PASSWORD_ENV in environ:
        return check_password(environ[PASSWORD_ENV])
    if not sys.stdin.isatty():
        raise UnsafeSetup(f"no terminal to read the password from without echo: run this interactively, or set "
                          f"{PASSWORD_ENV} (e.g. `read -rs {PASSWORD_ENV}; export {PASSWORD_ENV}`) for automation")
    password = check_password(getpass.getpass("Jupyter password (not echoed): "))
    if getpass.getpass("Repeat it: ") != password:
        raise UnsafeSetup("the two passwords differ; nothing was written")
    return password


def hash_password(password: str) -> str:
    """The argon2 hash jupyter_server checks at login ("argon2:$argon2id$..."); the password itself is not kept."""
    from jupyter_server.auth import passwd

    return passwd(check_password(password), algorithm="argon2")


def check_tls(certfile: str | None, keyfile: str | None) -> tuple[str, str] | None:
    """None when neither is given; else both absolute paths, after checking that they exist and belong together."""
    if not certfile and not keyfile:
        return None
    if not (certfile and keyfile):
        raise UnsafeSetup("TLS needs both --certfile and --keyfile")
    cert, key = Path(certfile).expanduser().resolve(), Path(keyfile).expanduser().resolve()
    for flag, path in (("--certfile", cert), ("--keyfile", key)):
        if not path.is_file():
            raise UnsafeSetup(f"{flag} {path} does not exist")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as exc:
        raise UnsafeSetup(f"{cert} and {key} are not a matching PEM certificate and private key ({exc})") from exc
    return str(cert), str(key)


def build_config(hashed_password: str, ip: str = "localhost", port: int = 8888, certfile: str | None = None,
                 keyfile: str | None = None, root_dir: str | None = None) -> dict[str, dict[str, object]]:
    """The jupyter_server config as a dict of {class name: {trait: value}}; refuses unsafe combinations."""
    if not hashed_password.startswith("argon2:"):
        raise UnsafeSetup("the config needs an argon2 password hash (from hash_password); the access token is "
                          "disabled only because a password is required")
    if not 1 <= port <= 65535:
        raise UnsafeSetup(f"--port {port} is not a TCP port (1-65535)")
    tls = check_tls(certfile, keyfile)
    local = is_local_address(ip)
    if not local and tls is None:
        raise UnsafeSetup(f"--ip {ip!r} listens on a public address: the password and your code would cross the "
                          f"network in clear text. Keep the default (localhost) and use an SSH tunnel, or give "
                          f"--certfile and --keyfile for TLS")
    server: dict[str, object] = {
        "ip": ip,
        "port": port,
        "port_retries": 0,  # fail if the port is taken rather than silently move away from the tunnel's port
        "open_browser": False,  # a server has no browser; the URL is printed instead
        "disable_check_xsrf": False,  # cookie-authenticated POST/PUT/DELETE must carry the _xsrf token
        "allow_origin": "",  # no cross-origin API access (never '*')
        "allow_remote_access": not local,  # on localhost: reject requests whose Host header is not local
        "allow_unauthenticated_access": False,  # endpoints without an explicit rule need a logged-in user
    }
    if tls is not None:
        server["certfile"], server["keyfile"] = tls
    if root_dir:
        server["root_dir"] = str(check_folder("--root-dir", str(Path(root_dir).expanduser()), exists=True).resolve())
    identity: dict[str, object] = {
        "hashed_password": hashed_password,
        "password_required": True,
        "token": "",  # no token login: the password is required instead
        "allow_password_change": False,
    }
    if tls is not None:
        identity["secure_cookie"] = True  # the login cookie is sent over HTTPS only
    return {"ServerApp": server, "PasswordIdentityProvider": identity}


def default_config_dir() -> Path:
    """Where jupyter looks for config: $JUPYTER_CONFIG_DIR, else ~/.jupyter."""
    from jupyter_core.paths import jupyter_config_dir

    return Path(jupyter_config_dir())


def write_config(config: Mapping[str, object], config_dir: Path, force: bool = False) -> Path:
    """Write the config as jupyter_server_config.json (mode 600, folder 700); refuse to overwrite unless `force`."""
    config_dir = check_folder("--config-dir", str(Path(config_dir).expanduser()))
    path = config_dir / CONFIG_NAME
    if path.exists() and not force:
        raise UnsafeSetup(f"{path} exists; look at it, then run again with --force to replace it")
    try:
        config_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:  # a file where a parent folder should be, no permission, ...
        raise UnsafeSetup(f"cannot write {path} ({exc.strerror or exc}); choose another --config-dir") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    os.chmod(path, 0o600)  # also when the file existed with wider permissions
    return path


def instructions(config: Mapping[str, Mapping[str, object]], path: Path) -> str:
    """What to run next: start the server, and reach it (SSH tunnel for localhost, https for a public address)."""
    server = config["ServerApp"]
    port = server["port"]
    env = "" if path.parent == default_config_dir() else f"JUPYTER_CONFIG_DIR={path.parent} "
    lines = [f"Wrote {path} (argon2 password hash, mode 600).", "",
             "Start the server on this machine:", f"  {env}jupyter lab", ""]
    if "certfile" in server:
        host = server["ip"] if server["ip"] not in ("", "0.0.0.0", "::") else socket.getfqdn()
        lines += ["Open in your browser:", f"  https://{host}:{port}/"]
    else:
        user, host = getpass.getuser(), socket.gethostname()
        lines += ["On your laptop, open an SSH tunnel (keep it running):",
                  f"  ssh -L {port}:localhost:{port} {user}@{host}",
                  "then browse to:", f"  http://localhost:{port}/"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        lines += ["", "You are root: run JupyterLab as a normal user (as root it refuses to start without --allow-root)."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-dir", type=Path, default=None,
                        help="folder to write jupyter_server_config.json into (default: $JUPYTER_CONFIG_DIR or ~/.jupyter)")
    parser.add_argument("--ip", default="localhost",
                        help="address to listen on (default localhost; anything else needs --certfile and --keyfile)")
    parser.add_argument("--port", type=int, default=8888, help="port (default 8888)")
    parser.add_argument("--certfile", help="TLS certificate (PEM), required for a public --ip")
    parser.add_argument("--keyfile", help="TLS private key (PEM), required for a public --ip")
    parser.add_argument("--root-dir", help="folder JupyterLab opens (default: where it is started)")
    parser.add_argument("--force", action="store_true", help="replace an existing jupyter_server_config.json")
    args = parser.parse_args(argv)
    try:
        # Check the folders, the address and certificate before asking for a password that would then be thrown away.
        config_dir = check_folder("--config-dir", str((args.config_dir or default_config_dir()).expanduser()))
        build_config("argon2:check", args.ip, args.port, args.certfile, args.keyfile, args.root_dir)
        config = build_config(hash_password(read_password(environ)), args.ip, args.port, args.certfile, args.keyfile,
                              args.root_dir)
        path = write_config(config, config_dir, force=args.force)
    except (UnsafeSetup, CourseError) as exc:  # one line, exit status 2, nothing written
        print(f"refused: {exc}", file=sys.stderr)
        return REFUSED_EXIT
    except (KeyboardInterrupt, EOFError):
        print("\ncancelled; nothing was written", file=sys.stderr)
        return REFUSED_EXIT
    print(instructions(config, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
