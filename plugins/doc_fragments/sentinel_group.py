"""Options of the modules that reach a whole Sentinel-managed group: its Sentinels, then its
data nodes."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  master_name:
    description: "Name of the monitored group."
    type: str
    required: true
  sentinels:
    description: "Sentinel addresses."
    type: list
    elements: str
    required: true
  sentinel_port:
    description: "Sentinel port."
    type: int
    default: 26379
  sentinel_password:
    description: "Password of the Sentinels' default user."
    type: str
  sentinel_previous_passwords:
    description: "Tried when a Sentinel refuses O(sentinel_password) (a rotation under way)."
    type: list
    elements: str
    default: []
  node_user:
    description: "ACL user for the data nodes (the commands it needs: see the module's description)."
    type: str
  node_password:
    description: "Password of O(node_user)."
    type: str
  node_previous_passwords:
    description: "Tried when the nodes refuse O(node_password) (a rotation under way)."
    type: list
    elements: str
    default: []
  tls_ca_file:
    description:
      - CA certificate file on the host. When set, Sentinels and nodes are reached over TLS and
        their certificates must be signed by it and name the address connected to.
    type: path
"""
