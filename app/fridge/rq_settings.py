"""Settings for RQ's own command line on an app host, through Sentinel with the app's
configuration (FRIDGE_CONFIG) and its Redis user, TLS included:

    sudo FRIDGE_CONFIG=/etc/fridge/config.toml /srv/fridge/venv/bin/rq info -c fridge.rq_settings

(RQ reads SENTINEL from the module given with -c; see rq.cli.helpers.get_redis_from_config.)
"""

from __future__ import annotations

from kitqueue.store import host_port as _host_port
from kitqueue.store import tls_kwargs as _tls_kwargs

from . import config as _config

_settings = _config.load()
_tls = _tls_kwargs(_settings)
_timeout = float(_settings["REDIS_SOCKET_TIMEOUT"])

SENTINEL = {
    "INSTANCES": [_host_port(s) for s in _settings["SENTINELS"]],
    "MASTER_NAME": _settings["MASTER_NAME"],
    "USERNAME": _settings["REDIS_USERNAME"],
    "PASSWORD": _settings["REDIS_PASSWORD"],
    "SOCKET_TIMEOUT": _timeout,
    "SSL": bool(_tls),
    "CONNECTION_KWARGS": {"socket_connect_timeout": float(_settings["REDIS_CONNECT_TIMEOUT"]), **_tls},
    "SENTINEL_KWARGS": {
        "username": _settings["SENTINEL_USERNAME"],
        "password": _settings["SENTINEL_PASSWORD"],
        "socket_timeout": float(_settings["SENTINEL_TIMEOUT"]),
        **({"ssl": True, **_tls} if _tls else {}),
    },
}
QUEUES = list(_settings["QUEUES"])
