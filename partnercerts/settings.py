"""Settings read once from the environment; defaults suit the embedded workstation mode."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

ROOT = Path(__file__).resolve().parent.parent


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
        )
