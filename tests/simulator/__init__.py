"""The simulated WhatsApp reached over loopback: gateways on it, one connection per account,
redials, the replicas' gate, and the simulator as a process of its own."""
