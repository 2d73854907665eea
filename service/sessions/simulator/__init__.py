"""A simulated WhatsApp reached over loopback, so that several gateway processes can share it.

``server.SimulatorServer`` plays WhatsApp's side for many accounts (one connection each, as
WhatsApp allows one per device) and records who connected and what was sent;
``session.SimulatorSession`` is the gateway's side; ``python -m service.sessions.simulator``
runs the server as a process of its own, steered through ``control.SimulatorControl``.
"""
