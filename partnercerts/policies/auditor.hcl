# partnercerts-auditor: what `scripts/inv status` needs, and nothing that holds a secret.
#
# MAY     read and list KV v2 metadata under {{mount}}/metadata/{{prefix}}/ (version numbers,
#         times, and the credential index {{prefix}}/index/<mzp>.<app>, custom metadata only);
#         list the index with its metadata in pages ({{mount}}/detailed-metadata/{{prefix}}/index/,
#         OpenBao 2.2+: the index folder only, which holds no record and no secret);
#         read the mount check sys/internal/ui/mounts/{{mount}}.
# MAY NOT read any data path (no key, certificate, password, CSR or host report); write,
#         delete, undelete or destroy anything; touch any other mount, policy or auth method.

path "{{mount}}/metadata/{{prefix}}/*" {
  capabilities = ["read", "list"]
}

path "{{mount}}/detailed-metadata/{{prefix}}/index/" {
  capabilities = ["list"]
}

path "sys/internal/ui/mounts/{{mount}}" {
  capabilities = ["read"]
}
