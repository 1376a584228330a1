# partnercerts-rotator: what `scripts/inv rotate` (and csr, import-cert, account, rollback, p12) needs.
#
# MAY     create, read, update and list every record under {{mount}}/{{prefix}}/: pending keys and
#         CSRs, current, history, host reports, account passwords, the sandbox authority and the
#         rotation lock at {{prefix}}/locks/rotate;
#         read, list, create and update their KV v2 metadata (the credential index is custom
#         metadata under {{prefix}}/index/; max_versions is raised to 1000 so KV v2 prunes nothing);
#         list the index with its metadata in pages ({{mount}}/detailed-metadata/{{prefix}}/index/);
#         read the mount check sys/internal/ui/mounts/{{mount}}.
# MAY NOT delete, undelete or destroy any version ({{mount}}/delete|undelete|destroy/, denied
#         explicitly so a broader policy attached by mistake cannot grant it); delete metadata
#         (which would destroy every version); patch; set delete_version_after (automatic
#         deletion); touch any other path of {{mount}}, any other mount, policy or auth method.
# NOTE    Vault cannot pin a numeric parameter to a value, so this role could still lower
#         max_versions and have the next write prune old versions; audit metadata writes.

path "{{mount}}/data/{{prefix}}/*" {
  capabilities = ["create", "read", "update", "list"]
}

path "{{mount}}/metadata/{{prefix}}/*" {
  capabilities = ["create", "read", "update", "list"]
  denied_parameters = {
    "delete_version_after" = []
  }
}

path "{{mount}}/detailed-metadata/{{prefix}}/index/" {
  capabilities = ["list"]
}

path "{{mount}}/delete/{{prefix}}/*" {
  capabilities = ["deny"]
}

path "{{mount}}/undelete/{{prefix}}/*" {
  capabilities = ["deny"]
}

path "{{mount}}/destroy/{{prefix}}/*" {
  capabilities = ["deny"]
}

path "sys/internal/ui/mounts/{{mount}}" {
  capabilities = ["read"]
}
