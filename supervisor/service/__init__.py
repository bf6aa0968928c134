"""The host service: `neko-supervisor serve`, an authenticated HTTP API over a `Supervisor`.

    app.py        routes -> Supervisor calls; the auth guard; errors -> JSON answers
    auth.py       the API token (environment, file, or generated 0600) and the Host check
    errors.py     supervisor errors -> HTTP status codes, the JSON error shape
    metrics.py    Prometheus metrics (prometheus-client)
    views.py      a plugin's status as JSON
    logformat.py  one line per event, text or JSON lines
    serve.py      bind, start, signals, clean stop

To embed the API in your own aiohttp program, use `create_app(supervisor, config)`.
"""

from supervisor.service.app import ServiceConfig, ServiceState, create_app
from supervisor.service.auth import HostPolicy, Token
from supervisor.service.serve import ServeError, ServeOptions, serve

__all__ = ["HostPolicy", "ServeError", "ServeOptions", "ServiceConfig", "ServiceState", "Token", "create_app", "serve"]
