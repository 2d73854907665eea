"""The mark of a forwarded call, as gRPC metadata and as an HTTP header."""

#: Its value is the forwarding replica's id (for the owner's logs and a reader's sake); only its
#: presence matters to the gateway.
MARKER = "x-privacy-gateway-forwarded"
