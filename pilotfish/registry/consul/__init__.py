"""The read side of Consul's HTTP API over any pilotfish catalog, for tools that discover via it.

Prometheus (`consul_sd_configs`), Traefik's Consul Catalog provider and consul-template read
`/v1/catalog/*`, `/v1/health/service/*`, `/v1/agent/self` and `/v1/status/leader`; this package
answers them from the catalog, whatever its backend: `shapes` builds Consul's JSON (and the node
each instance is shown on), `filter` evaluates `?filter=`, `blocking` keeps one index per answer
for `?index=&wait=`, and `routes` serves it all on the registry API's listener.
"""
