# The gateway on Python 3.11. With no configuration it runs the demo instance; mount a config and
# set PRIVACY_GATEWAY_CONFIG to serve real instances:
#   docker run -p 50051:50051 -v "$PWD/gateway.toml:/etc/privacy-gateway/gateway.toml:ro" \
#     -e PRIVACY_GATEWAY_CONFIG=/etc/privacy-gateway/gateway.toml privacy-gateway
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
RUN pip install --no-cache-dir . && useradd --system --no-create-home gateway

USER gateway
ENV PRIVACY_GATEWAY_LISTEN=0.0.0.0:50051 \
    PRIVACY_GATEWAY_ADDRESS=127.0.0.1:50051 \
    PYTHONUNBUFFERED=1
EXPOSE 50051

HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["privacy-gateway", "health"]

# SIGTERM (docker stop) drains in-flight calls for shutdown_grace_seconds before exiting.
STOPSIGNAL SIGTERM
ENTRYPOINT ["privacy-gateway"]
CMD ["serve"]
