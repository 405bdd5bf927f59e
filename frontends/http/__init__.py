"""The HTTP frontend: a Falcon WSGI app over the Registry."""

from userplane.frontends.http.app import create_app, get_app

__all__ = ["create_app", "get_app"]
