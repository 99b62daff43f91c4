"""The registry API: the REST API (/v1) and the Consul-compatible read API over a catalog."""
