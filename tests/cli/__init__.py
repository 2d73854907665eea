"""The ``privacy-gateway`` command as real processes, and the configuration it loads."""
