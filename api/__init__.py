"""The user-facing API: Starlette REST routes, Socket.IO and topic streaming, and the dashboard."""

from api.app import create_app, main
from api.auth import Authenticator, DevTokenAuthenticator, Principal
from api.rooms import Room, RoomError, parse_room
from api.streaming import LIVE_TOPICS, LiveEvent, TopicTail, live_event

__all__ = [
    "LIVE_TOPICS",
    "Authenticator",
    "DevTokenAuthenticator",
    "LiveEvent",
    "Principal",
    "Room",
    "RoomError",
    "TopicTail",
    "create_app",
    "live_event",
    "main",
    "parse_room",
]
