"""Least-privilege Vault policies and AppRoles: one per job (rotator, deployer, auditor).

The policies ship as HCL templates beside this module (`partnercerts/policies/<role>.hcl`, package
data) with `{{mount}}` and `{{prefix}}` placeholders, rendered for the configured KV v2 mount and
prefix by `render`; `scripts/inv vault.bootstrap` writes them and binds each to an AppRole of the
same name.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import UserError

ROLES = ("rotator", "deployer", "auditor")
TEMPLATE_DIR = Path(__file__).resolve().parent
# What every AppRole gets; secret IDs do not expire (rotating them is the operator's job).
ROLE_SETTINGS = {"token_ttl": 3600, "token_max_ttl": 4 * 3600, "secret_id_ttl": 0}

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_]+)\s*\}\}")
# Letters, digits, '.', '_' and '-' per segment: no quote (HCL), no '*' or '+' (ACL globs), no '{{' (templating).
_SAFE_PATH = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")


def name(role: str) -> str:
    """The policy and AppRole name of a role, e.g. partnercerts-rotator."""
    return f"partnercerts-{role}"


def render(template: str, mount: str, prefix: str) -> str:
    """The template with {{mount}} and {{prefix}} filled in; refuses values that would change the policy's meaning."""
    values = {"mount": mount, "prefix": prefix}
    for var, key in (("PARTNERCERTS_KV_MOUNT", "mount"), ("PARTNERCERTS_PREFIX", "prefix")):
        if not _SAFE_PATH.fullmatch(values[key]):
            raise UserError(f"{var}={values[key]!r} cannot be written into a Vault policy; use letters, digits, "
                            "'.', '_', '-' and '/' only")

    def fill(match: re.Match) -> str:
        if match.group(1) not in values:
            raise ValueError(f"policy template: unknown placeholder {match.group(0)}")
        return values[match.group(1)]

    return _PLACEHOLDER.sub(fill, template)


def rendered(mount: str, prefix: str, template_dir: Path = TEMPLATE_DIR) -> dict[str, str]:
    """Policy name -> HCL for every role, in ROLES order."""
    return {name(role): render((template_dir / f"{role}.hcl").read_text(encoding="utf-8"), mount, prefix)
            for role in ROLES}
