"""Options of the modules that log in to one Redis or Valkey node (or one Sentinel):
kit.jobqueue.login, and its TLS options alone, kit.jobqueue.login.tls."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  login_host:
    description: "Address of the server."
    type: str
    default: 127.0.0.1
  login_port:
    description: "Its port."
    type: int
    default: 6379
  login_user:
    description: "ACL user to log in as (the commands it needs are in the module's description)."
    type: str
  login_password:
    description: "Its password."
    type: str
  login_previous_passwords:
    description: "Tried when the server refuses O(login_password) (a rotation under way)."
    type: list
    elements: str
    default: []
"""

    TLS = r"""
options:
  tls_ca_file:
    description:
      - CA certificate file on the host. When set, the connection is TLS and the server's
        certificate must be signed by it and name O(tls_server_name).
    type: path
  tls_server_name:
    description: "Name or address the server's certificate must carry (default: O(login_host))."
    type: str
"""
