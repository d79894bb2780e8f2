"""The WSGI application object for mod_wsgi (`fridge.wsgi:application`)."""

from .web import create_app

application = create_app()
