"""The service mesh: identities, the CA that issues them, intentions, and the TLS proxies."""
