"""The user-facing API: Starlette REST routes, Socket.IO and topic streaming, and the dashboard."""

from api.app import create_app, main
from api.auth import Authenticator, DevTokenAuthenticator, JwtAuthenticator, Principal, requires_auth
from api.rooms import Room, RoomError, parse_room
from api.streaming import LIVE_TOPICS, LiveEvent, TopicTail, live_event

__all__ = [
    "LIVE_TOPICS",
    "Authenticator",
    "DevTokenAuthenticator",
    "JwtAuthenticator",
    "LiveEvent",
    "Principal",
    "Room",
    "RoomError",
    "TopicTail",
    "create_app",
    "live_event",
    "main",
    "parse_room",
    "requires_auth",
]
