"""The WhatsApp side of the gateway, behind one small interface (``Session``)."""

from service.sessions.base import Session, SessionError
from service.sessions.simulated import SimulatedSession

__all__ = ["Session", "SessionError", "SimulatedSession"]
