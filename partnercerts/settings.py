"""Settings read once from the environment; defaults suit the embedded workstation mode."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DOWNLOAD_HOSTS = "*.groupe-psa.com,*.mpsa.com,*.stellantis.com"


def _int(env: dict, name: str, default: int, minimum: int = 0) -> int:
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


@dataclass(frozen=True)
class Settings:
    inventory: Path
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

    @classmethod
    def from_env(cls, env: dict | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        inventory = Path(env.get("PARTNERCERTS_INVENTORY") or ROOT / "inventories" / "local")
        if not inventory.is_absolute():
            inventory = Path.cwd() / inventory
        state = Path(env.get("PARTNERCERTS_STATE_DIR") or ROOT / ".state")
        prefix = (env.get("PARTNERCERTS_PREFIX") or "partnercerts").strip("/")
        mount = (env.get("PARTNERCERTS_KV_MOUNT") or "secret").strip("/")
        for name, value in (("PARTNERCERTS_PREFIX", prefix), ("PARTNERCERTS_KV_MOUNT", mount)):
            if not value or any(part in ("", ".", "..") for part in value.split("/")):
                raise UserError(f"environment {name}={value!r} is not a valid Vault path; use e.g. 'partnercerts'")
        ca = env.get("PARTNERCERTS_CA_FILE")
        return cls(
            inventory=inventory,
            state_dir=state.resolve(),
            kv_mount=mount,
            prefix=prefix,
            min_validity_days=_int(env, "PARTNERCERTS_MIN_VALIDITY_DAYS", 30),
            max_input_bytes=_int(env, "PARTNERCERTS_MAX_INPUT_BYTES", 1 << 20, 1024),
            ca_file=Path(ca) if ca else None,
            sandbox_validity_days=_int(env, "PARTNERCERTS_SANDBOX_VALIDITY_DAYS", 365, 1),
            embedded_port=_int(env, "PARTNERCERTS_EMBEDDED_PORT", 18200, 1),
            # The authority's download links must point at one of these hosts (*.domain patterns).
            download_hosts=tuple(h.strip() for h in (env.get("PARTNERCERTS_DOWNLOAD_HOSTS")
                                                     or DEFAULT_DOWNLOAD_HOSTS).split(",") if h.strip()),
            download_cafile=env.get("PARTNERCERTS_DOWNLOAD_CAFILE") or None,
            max_eml_bytes=_int(env, "PARTNERCERTS_MAX_EML_BYTES", 10 << 20, 1024),
        )
