"""mod_wsgi entry point: `WSGIScriptAlias / .../wsgi.py` finds `application` here."""

from fridge import create_app

application = create_app()
