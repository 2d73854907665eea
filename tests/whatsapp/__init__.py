"""The WhatsApp session: through the stand-in of neonize and whatsmeow, and on the real
neonize library with no network (its dial, its guard, its threads, the probe, its leaks)."""
