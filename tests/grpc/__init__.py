"""The gRPC surface: authentication, the error table, InstanceService, ordering, the server
beside the service (health, reflection), WatchPrivacySettings, and the generated code."""
