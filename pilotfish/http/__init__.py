"""The HTTP plumbing every component shares: the server and its limits, TLS, ACL, status."""
