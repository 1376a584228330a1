"""Settings read once from the environment; defaults suit the embedded workstation mode.

Every environment variable the toolkit reads is read here (README, "Settings"). Building them
must stay cheap: `status` builds them first thing, so nothing heavy is imported.
"""
from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DOWNLOAD_HOSTS = "*.groupe-psa.com,*.mpsa.com,*.stellantis.com"
DEFAULT_SANDBOX_API_PORT = 18443
DEFAULT_EMBEDDED_PORT = 18200
# Non-secret settings a scheduled job needs to find the same Vault and inventory as the shell that installed it.
SCHEDULE_ENV = ("VAULT_ADDR", "VAULT_CACERT", "VAULT_NAMESPACE", "VAULT_APPROLE_MOUNT", "PARTNERCERTS_INVENTORY",
                "PARTNERCERTS_KV_MOUNT", "PARTNERCERTS_PREFIX", "PARTNERCERTS_STATE_DIR", "PARTNERCERTS_CA_FILE",
                "PARTNERCERTS_EMBEDDED_PORT", "PARTNERCERTS_SANDBOX_API_PORT")
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy")


def _checkout() -> Path | None:
    """The repository root when the package runs from a checkout (editable install), else None (a wheel)."""
    return ROOT if (ROOT / "pyproject.toml").is_file() and (ROOT / "playbooks").is_dir() else None


CHECKOUT = _checkout()


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UserError(f"environment {name}={raw!r} is not a whole number; set it to e.g. {default}") from None
    if value < minimum:
        raise UserError(f"environment {name}={value} is below {minimum}; set it to at least {minimum}")
    return value


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(str(raw))
    except ValueError:
        raise UserError(f"environment {name}={raw!r} is not a port number; use e.g. {default}") from None
    if not 1 <= value <= 65535:
        raise UserError(f"environment {name}={value} is not a port number (1-65535); use e.g. {default}")
    return value


def embedded_port_file(state_dir: Path) -> Path:
    """Where the embedded OpenBao of a state directory records its port (when PARTNERCERTS_EMBEDDED_PORT is unset)."""
    return state_dir / "vault" / "port"


def sandbox_port_file(state_dir: Path) -> Path:
    """Where the sandbox API of a state directory records its port (the local inventory's URL reads it)."""
    return state_dir / "sandbox-api" / "port"


def recorded_port(path: Path) -> int | None:
    """The port recorded in a state directory's port file, None when there is none (or it is not a port)."""
    try:
        value = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return value if 1 <= value <= 65535 else None


def _now(raw: str | None) -> dt.datetime | None:
    if not raw:
        return None
    try:
        value = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise UserError(f"PARTNERCERTS_NOW={raw!r} is not an ISO 8601 time; "
                        "use e.g. 2027-01-31T00:00:00+00:00") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def _state_default(env: Mapping[str, str]) -> Path:
    """.state in a checkout; installed, the XDG state directory ($XDG_STATE_HOME or ~/.local/state)."""
    if CHECKOUT is not None:
        return CHECKOUT / ".state"
    base = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME") or "~").expanduser() / ".local" / "state")
    return Path(base) / "partnercerts"


@dataclass(frozen=True)
class VaultSettings:
    """The standard Vault client environment (VAULT_*), plus the retry budget across cluster nodes."""

    addr: str | None = None  # one address, or the comma-separated nodes of one cluster; None: the embedded server
    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None  # ~/.vault-token, read only when neither VAULT_TOKEN nor an AppRole is given
    role_id: str | None = None
    secret_id: str | None = field(default=None, repr=False)
    approle_mount: str = "approle"
    cacert: str | None = None
    skip_verify: bool = False
    namespace: str | None = None
    retry_seconds: float = 10.0
    proxied: bool = False  # an http(s)_proxy / all_proxy is set: requests will use it
    ca_bundle: str | None = None  # REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE, as requests reads them

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "VaultSettings":
        raw_retry = env.get("PARTNERCERTS_VAULT_RETRY_SECONDS")
        try:
            retry = float(raw_retry or 10)
        except ValueError:
            raise UserError("PARTNERCERTS_VAULT_RETRY_SECONDS is not a number of seconds; set it to e.g. 10") from None
        return cls(
            addr=env.get("VAULT_ADDR") or None,
            token=env.get("VAULT_TOKEN") or None,
            token_file=Path(env.get("HOME", "~")).expanduser() / ".vault-token",
            role_id=env.get("VAULT_ROLE_ID") or None,
            secret_id=env.get("VAULT_SECRET_ID") or None,
            approle_mount=(env.get("VAULT_APPROLE_MOUNT") or "approle").strip("/"),
            cacert=env.get("VAULT_CACERT") or None,
            skip_verify=env.get("VAULT_SKIP_VERIFY", "").lower() in ("1", "true", "yes"),
            namespace=env.get("VAULT_NAMESPACE") or None,
            retry_seconds=retry,
            proxied=any(env.get(v) or env.get(v.upper()) for v in _PROXY_VARS),
            ca_bundle=env.get("REQUESTS_CA_BUNDLE") or env.get("CURL_CA_BUNDLE") or None,
        )


@dataclass(frozen=True)
class Settings:
    inventory_path: Path | None  # None: installed without PARTNERCERTS_INVENTORY (`inventory` says what to set)
    state_dir: Path
    kv_mount: str
    prefix: str
    min_validity_days: int
    max_input_bytes: int
    ca_file: Path | None
    sandbox_validity_days: int
    embedded_port: int
    download_hosts: tuple[str, ...] = ()
    download_cafile: str | None = None
    max_eml_bytes: int = 10 << 20
    sandbox_api_port: int = DEFAULT_SANDBOX_API_PORT
    # Set by the environment (PARTNERCERTS_EMBEDDED_PORT, PARTNERCERTS_SANDBOX_API_PORT): a busy port is an error.
    # Unset, the port is the one recorded in the state directory (else the default), and a busy one is replaced.
    embedded_port_pinned: bool = False
    sandbox_api_port_pinned: bool = False
    now: dt.datetime | None = None  # PARTNERCERTS_NOW: ask "what if" at another time; None: the clock
    debug: bool = False  # PARTNERCERTS_DEBUG: let unexpected exceptions show their traceback
    checkout: Path | None = CHECKOUT  # the repository this runs from (playbooks, ansible.cfg), None when installed
    vault: VaultSettings = field(default_factory=VaultSettings)
    schedule_env: Mapping[str, str] = field(default_factory=dict)  # SCHEDULE_ENV variables that are set

    @property
    def inventory(self) -> Path:
        """The Ansible inventory with the partners; installed, PARTNERCERTS_INVENTORY must name it."""
        if self.inventory_path is None:
            raise UserError("PARTNERCERTS_INVENTORY is not set, and an installed partnercerts has no default "
                            "inventory; set it to your Ansible inventory, e.g. "
                            "export PARTNERCERTS_INVENTORY=/etc/partnercerts/inventory")
        return self.inventory_path

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        raw_inventory = env.get("PARTNERCERTS_INVENTORY")
        inventory: Path | None = None
        if raw_inventory:
            inventory = Path(raw_inventory)
        elif CHECKOUT is not None:
            inventory = CHECKOUT / "inventories" / "local"
        if inventory is not None and not inventory.is_absolute():
            inventory = Path.cwd() / inventory
        state = Path(env.get("PARTNERCERTS_STATE_DIR") or _state_default(env))
        prefix = (env.get("PARTNERCERTS_PREFIX") or "partnercerts").strip("/")
        mount = (env.get("PARTNERCERTS_KV_MOUNT") or "secret").strip("/")
        for name, value in (("PARTNERCERTS_PREFIX", prefix), ("PARTNERCERTS_KV_MOUNT", mount)):
            if not value or any(part in ("", ".", "..") for part in value.split("/")):
                raise UserError(f"environment {name}={value!r} is not a valid Vault path; use e.g. 'partnercerts'")
        ca = env.get("PARTNERCERTS_CA_FILE")
        state = state.resolve()
        return cls(
            inventory_path=inventory,
            state_dir=state,
            kv_mount=mount,
            prefix=prefix,
            min_validity_days=_int(env, "PARTNERCERTS_MIN_VALIDITY_DAYS", 30),
            max_input_bytes=_int(env, "PARTNERCERTS_MAX_INPUT_BYTES", 1 << 20, 1024),
            ca_file=Path(ca) if ca else None,
            sandbox_validity_days=_int(env, "PARTNERCERTS_SANDBOX_VALIDITY_DAYS", 365, 1),
            embedded_port=_int(env, "PARTNERCERTS_EMBEDDED_PORT",
                               recorded_port(embedded_port_file(state)) or DEFAULT_EMBEDDED_PORT, 1),
            embedded_port_pinned=bool(env.get("PARTNERCERTS_EMBEDDED_PORT")),
            # The authority's download links must point at one of these hosts (*.domain patterns).
            download_hosts=tuple(h.strip() for h in (env.get("PARTNERCERTS_DOWNLOAD_HOSTS")
                                                     or DEFAULT_DOWNLOAD_HOSTS).split(",") if h.strip()),
            download_cafile=env.get("PARTNERCERTS_DOWNLOAD_CAFILE") or None,
            max_eml_bytes=_int(env, "PARTNERCERTS_MAX_EML_BYTES", 10 << 20, 1024),
            sandbox_api_port=_port(env, "PARTNERCERTS_SANDBOX_API_PORT",
                                   recorded_port(sandbox_port_file(state)) or DEFAULT_SANDBOX_API_PORT),
            sandbox_api_port_pinned=bool(env.get("PARTNERCERTS_SANDBOX_API_PORT")),
            now=_now(env.get("PARTNERCERTS_NOW")),
            debug=bool(env.get("PARTNERCERTS_DEBUG")),
            vault=VaultSettings.from_env(env),
            schedule_env={k: env[k] for k in SCHEDULE_ENV if env.get(k)},
        )
