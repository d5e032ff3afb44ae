"""The user-facing API: Starlette REST routes, Socket.IO and topic streaming, and the dashboard.

Import from the submodules (``api.app.create_app``, ``api.auth.requires_auth``, ...):
this package imports nothing itself, so a worker or connector process that only
needs ``webscada``'s argument parser does not load Starlette, Socket.IO and aiohttp.
"""
