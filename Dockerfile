# The gateway on Python 3.11. With no configuration it runs the demo instance; mount a config and
# set PRIVACY_GATEWAY_CONFIG to serve real instances:
#   docker run -p 50051:50051 -p 8080:8080 -v "$PWD/gateway.toml:/etc/privacy-gateway/gateway.toml:ro" \
#     -e PRIVACY_GATEWAY_CONFIG=/etc/privacy-gateway/gateway.toml privacy-gateway
FROM python:3.11-slim

# neonize (the WhatsApp library) needs libmagic at import.
RUN apt-get update && apt-get install -y --no-install-recommends libmagic1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
RUN pip install --no-cache-dir . \
    && useradd --system --create-home --home-dir /var/lib/privacy-gateway gateway \
    && mkdir -p /var/lib/privacy-gateway/data \
    && chown -R gateway /var/lib/privacy-gateway

USER gateway
WORKDIR /var/lib/privacy-gateway
ENV PRIVACY_GATEWAY_LISTEN=0.0.0.0:50051 \
    PRIVACY_GATEWAY_HTTP_LISTEN=0.0.0.0:8080 \
    PRIVACY_GATEWAY_ADDRESS=127.0.0.1:50051 \
    PRIVACY_GATEWAY_DATA_DIR=/var/lib/privacy-gateway/data \
    PYTHONUNBUFFERED=1
# WhatsApp session stores live here: mount a volume to keep pairings across containers.
VOLUME /var/lib/privacy-gateway/data
EXPOSE 50051 8080

HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["privacy-gateway", "health"]

# SIGTERM (docker stop) drains in-flight calls for shutdown_grace_seconds before exiting.
STOPSIGNAL SIGTERM
ENTRYPOINT ["privacy-gateway"]
CMD ["serve"]
