"""The HTTP frontend: a Falcon WSGI app over the Registry.

Public for plugins that add routes (``userplane_http_routes``): ``create_app``,
``get_app``, ``PUBLIC``, the action of a route anyone may call (every
resource declares, in ``actions``, the action each of its methods needs), and
``query_params``, a request's query parameters as every resource takes them.
``userplane.frontends.http.testing`` is an in-process client for tests.
"""

from userplane.frontends.http.app import create_app, get_app
from userplane.frontends.http.auth import PUBLIC
from userplane.frontends.http.params import query_params

__all__ = ["PUBLIC", "create_app", "get_app", "query_params"]
