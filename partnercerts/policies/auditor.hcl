# partnercerts-auditor: what `scripts/inv status` needs, and nothing that holds a secret.
#
# MAY     read and list KV v2 metadata under {{mount}}/metadata/{{prefix}}/ (version numbers,
#         times, and the credential index in the custom metadata of `current`);
#         read the mount check sys/internal/ui/mounts/{{mount}}.
# MAY NOT read any data path (no key, certificate, password, CSR or host report); write,
#         delete, undelete or destroy anything; touch any other mount, policy or auth method.

path "{{mount}}/metadata/{{prefix}}/*" {
  capabilities = ["read", "list"]
}

path "sys/internal/ui/mounts/{{mount}}" {
  capabilities = ["read"]
}
