"""DNS for what is registered: SRV, A and AAAA answers pre-encoded from the catalog view."""
