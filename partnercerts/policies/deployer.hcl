# partnercerts-deployer: what `scripts/inv deploy` / `verify` (the Ansible action and callback
# plugins) need to put current credentials on hosts and report what the hosts serve.
#
# MAY     read the latest version of {{prefix}}/<mzp>/apps/<app>/current (key, certificate, chain,
#         CA, Client ID, PKCS#12 password) and of {{prefix}}/<mzp>/account (the MZP password that
#         goes into client.env); older versions (?version=N, i.e. earlier keys) are refused;
#         create, read and update the host report {{prefix}}/<mzp>/apps/<app>/hosts (no secrets);
#         read, create and update the credential index ({{prefix}}/index/<mzp>.<app>, custom metadata
#         only: max_versions, delete_version_after and cas_required are refused), and read where it
#         lives ({{prefix}}/layout); read and, before the first rotator run moved it there (layout 1),
#         update the index in the custom metadata of `current` in the same way;
#         read the mount check sys/internal/ui/mounts/{{mount}}.
# MAY NOT read pending keys, history, the sandbox authority or anything else under {{prefix}}/;
#         write `current`, `account` or any key; list; delete, undelete or destroy anything;
#         touch any other mount, policy or auth method.

path "{{mount}}/data/{{prefix}}/+/apps/+/current" {
  capabilities = ["read"]
  denied_parameters = {
    "version" = []
  }
}

path "{{mount}}/data/{{prefix}}/+/account" {
  capabilities = ["read"]
  denied_parameters = {
    "version" = []
  }
}

path "{{mount}}/data/{{prefix}}/+/apps/+/hosts" {
  capabilities = ["create", "read", "update"]
}

path "{{mount}}/metadata/{{prefix}}/+/apps/+/current" {
  capabilities = ["create", "read", "update"]
  denied_parameters = {
    "max_versions"         = []
    "delete_version_after" = []
    "cas_required"         = []
  }
}

path "{{mount}}/metadata/{{prefix}}/index/+" {
  capabilities = ["create", "read", "update"]
  denied_parameters = {
    "max_versions"         = []
    "delete_version_after" = []
    "cas_required"         = []
  }
}

path "{{mount}}/metadata/{{prefix}}/layout" {
  capabilities = ["read"]
}

path "sys/internal/ui/mounts/{{mount}}" {
  capabilities = ["read"]
}
