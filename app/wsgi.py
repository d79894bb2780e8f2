"""mod_wsgi entry point when serving from a source checkout: exposes `application`."""

from fridge.wsgi import application

__all__ = ["application"]
