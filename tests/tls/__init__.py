"""TLS and mutual TLS on both edges, the CLI client's TLS options, and the tls_* configuration."""
