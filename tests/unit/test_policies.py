"""The policy templates under partnercerts/policies/ and their rendering for a mount and prefix."""
import re

import pytest

from partnercerts import policies
from partnercerts.errors import UserError

RULE = re.compile(r'^path "([^"]+)" \{\n(.*?)^\}', re.S | re.M)
CAPS = {"create", "read", "update", "patch", "delete", "list", "sudo", "deny"}


def rules(hcl: str) -> dict[str, set[str]]:
    """path -> capabilities, from a rendered policy (failing on anything that does not look like HCL rules)."""
    body = "\n".join(line for line in hcl.splitlines() if not line.startswith("#"))
    found = {}
    for path, block in RULE.findall(body):
        caps = re.search(r'capabilities = \[([^\]]*)\]', block)
        assert caps, path
        found[path] = {c.strip().strip('"') for c in caps.group(1).split(",")}
        assert found[path] <= CAPS, (path, found[path])
    # Nothing outside the rule blocks but blank lines: every line belongs to a parsed rule.
    assert RULE.sub("", body).strip() == ""
    assert body.count("{") == body.count("}")
    return found


def test_every_template_renders_with_no_placeholder_left_and_a_header():
    out = policies.rendered("kv-prod", "team/pc")
    assert list(out) == ["partnercerts-rotator", "partnercerts-deployer", "partnercerts-auditor"]
    for name, hcl in out.items():
        assert "{{" not in hcl and "}}" not in hcl, name
        header = hcl.split("\npath ")[0]
        assert header.startswith(f"# {name}:") and "MAY NOT" in header, name
        for path in rules(hcl):
            assert path.startswith(("kv-prod/data/team/pc/", "kv-prod/metadata/team/pc/", "kv-prod/delete/team/pc/",
                                    "kv-prod/undelete/team/pc/", "kv-prod/destroy/team/pc/")) \
                or path == "kv-prod/detailed-metadata/team/pc/index/" \
                or path == "sys/internal/ui/mounts/kv-prod", (name, path)


def test_the_roles_get_what_the_brief_says_and_no_more():
    out = {name.removeprefix("partnercerts-"): rules(hcl) for name, hcl in policies.rendered("secret", "pc").items()}
    rot, dep, aud = out["rotator"], out["deployer"], out["auditor"]
    assert rot["secret/data/pc/*"] == {"create", "read", "update", "list"}
    assert rot["secret/metadata/pc/*"] == {"create", "read", "update", "list"}
    assert all(rot[f"secret/{op}/pc/*"] == {"deny"} for op in ("delete", "undelete", "destroy"))
    assert not any({"delete", "sudo", "patch"} & caps for caps in rot.values())
    # The detailed listing (metadata of every entry, readable data or not) is granted on the index folder only.
    assert rot["secret/detailed-metadata/pc/index/"] == {"list"}
    assert dep == {
        "secret/data/pc/+/apps/+/current": {"read"},
        "secret/data/pc/+/account": {"read"},
        "secret/data/pc/+/apps/+/hosts": {"create", "read", "update"},
        "secret/metadata/pc/+/apps/+/current": {"create", "read", "update"},
        "secret/metadata/pc/index/+": {"create", "read", "update"},
        "secret/metadata/pc/layout": {"read"},
        "sys/internal/ui/mounts/secret": {"read"},
    }
    assert aud == {"secret/metadata/pc/*": {"read", "list"}, "secret/detailed-metadata/pc/index/": {"list"},
                   "sys/internal/ui/mounts/secret": {"read"}}


def test_render_fills_both_placeholders_and_tolerates_spaces():
    assert policies.render('path "{{mount}}/data/{{ prefix }}/*" {}', "m", "a/b") == 'path "m/data/a/b/*" {}'


@pytest.mark.parametrize("mount,prefix", [
    ("secret", 'pc" { capabilities = ["sudo"] } path "x'),  # HCL injection
    ("secret", "pc/*"), ("sec+ret", "pc"), ("secret", "pc/+"),  # ACL globs would widen the policy
    ("secret", "{{identity.entity.id}}"), ("secret", "p c"), ("secret", "pc/"), ("", "pc"),
])
def test_render_refuses_values_that_would_change_the_policy(mount, prefix):
    with pytest.raises(UserError, match="cannot be written into a Vault policy"):
        policies.render('path "{{mount}}/data/{{prefix}}/*" {}', mount, prefix)


def test_an_unknown_placeholder_is_a_template_bug():
    with pytest.raises(ValueError, match="unknown placeholder"):
        policies.render('path "{{mount}}/{{other}}" {}', "secret", "pc")
