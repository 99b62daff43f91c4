"""Consul's documented response examples (its HTTP API docs: catalog, health, agent, status pages).

Transcribed as data: the golden tests check that pilotfish answers with every documented field,
of the documented JSON type. Values differ; `Namespace` (Consul Enterprise only) is left out,
and the agent's free-form DebugConfig is an empty object.
"""

from __future__ import annotations

from typing import Any

CATALOG_SERVICES: dict[str, Any] = {
    "consul": [],
    "redis": [],
    "postgresql": ["primary", "secondary"],
}

CATALOG_SERVICE: list[dict[str, Any]] = [
    {
        "ID": "40e4a748-2192-161a-0510-9bf59fe950b5",
        "Node": "t2.320",
        "Address": "192.168.10.10",
        "Datacenter": "dc1",
        "TaggedAddresses": {"lan": "192.168.10.10", "wan": "10.0.10.10"},
        "NodeMeta": {"somekey": "somevalue"},
        "CreateIndex": 51,
        "ModifyIndex": 51,
        "ServiceAddress": "172.17.0.3",
        "ServiceEnableTagOverride": False,
        "ServiceID": "32a2a47f7992:nodea:5000",
        "ServiceName": "web",
        "ServicePort": 5000,
        "ServiceMeta": {"web_meta_value": "baz"},
        "ServiceTaggedAddresses": {
            "lan": {"address": "172.17.0.3", "port": 5000},
            "wan": {"address": "198.18.0.1", "port": 512},
        },
        "ServiceTags": ["prod"],
        "ServiceProxy": {
            "DestinationServiceName": "",
            "DestinationServiceID": "",
            "LocalServiceAddress": "",
            "LocalServicePort": 0,
            "Config": None,
            "Upstreams": None,
        },
        "ServiceConnect": {"Native": False, "Proxy": None},
    },
    # the filtering page's example adds ServiceKind and ServiceWeights
    {
        "ID": "b4f64e8c-5c7d-11e9-bf68-8c8590bd0966",
        "Node": "node-1",
        "Address": "198.18.0.1",
        "Datacenter": "dc1",
        "TaggedAddresses": None,
        "NodeMeta": {"agent": "true", "arch": "i386", "os": "darwin"},
        "ServiceKind": "",
        "ServiceID": "api-internal",
        "ServiceName": "api-internal",
        "ServiceTags": ["tag"],
        "ServiceAddress": "",
        "ServiceWeights": {"Passing": 1, "Warning": 1},
        "ServiceMeta": {"environment": "qa"},
        "ServicePort": 9090,
        "ServiceEnableTagOverride": False,
        "ServiceProxy": {},
        "ServiceConnect": {},
        "CreateIndex": 30,
        "ModifyIndex": 30,
    },
]

HEALTH_SERVICE: list[dict[str, Any]] = [
    {
        "Node": {
            "ID": "40e4a748-2192-161a-0510-9bf59fe950b5",
            "Node": "foobar",
            "Address": "10.1.10.12",
            "Datacenter": "dc1",
            "TaggedAddresses": {"lan": "10.1.10.12", "wan": "10.1.10.12"},
            "Meta": {"instance_type": "t2.medium"},
        },
        "Service": {
            "ID": "redis",
            "Service": "redis",
            "Tags": ["primary"],
            "Address": "10.1.10.12",
            "TaggedAddresses": {
                "lan": {"address": "10.1.10.12", "port": 8000},
                "wan": {"address": "198.18.1.2", "port": 80},
            },
            "Meta": {"redis_version": "4.0"},
            "Port": 8000,
            "Weights": {"Passing": 10, "Warning": 1},
        },
        "Checks": [
            {
                "Node": "foobar",
                "CheckID": "service:redis",
                "Name": "Service 'redis' check",
                "Status": "passing",
                "Notes": "",
                "Output": "",
                "ServiceID": "redis",
                "ServiceName": "redis",
                "ServiceTags": ["primary"],
            },
            {
                "Node": "foobar",
                "CheckID": "serfHealth",
                "Name": "Serf Health Status",
                "Status": "passing",
                "Notes": "",
                "Output": "",
                "ServiceID": "",
                "ServiceName": "",
                "ServiceTags": [],
            },
        ],
    }
]

HEALTH_CHECK_EXTRA: dict[str, Any] = {  # a check as the filtering page shows it
    "Node": "node-1",
    "CheckID": "node-health",
    "Name": "Node level check",
    "Status": "critical",
    "Notes": "",
    "Output": "",
    "ServiceID": "",
    "ServiceName": "",
    "ServiceTags": [],
    "Definition": {},
    "CreateIndex": 13,
    "ModifyIndex": 13,
}

CATALOG_NODES: list[dict[str, Any]] = [
    {
        "ID": "40e4a748-2192-161a-0510-9bf59fe950b5",
        "Node": "baz",
        "Address": "10.1.10.11",
        "Datacenter": "dc1",
        "TaggedAddresses": {"lan": "10.1.10.11", "wan": "10.1.10.11"},
        "Meta": {"instance_type": "t2.medium"},
    },
]

AGENT_SELF: dict[str, Any] = {
    "Config": {
        "Datacenter": "dc1",
        "NodeName": "foobar",
        "NodeID": "9d754d17-d864-b1d3-e758-f3fe25a9874f",
        "Server": True,
        "Revision": "deadbeef",
        "Version": "1.0.0",
    },
    "DebugConfig": {},
    "Coord": {"Adjustment": 0, "Error": 1.5, "Vec": [0, 0, 0, 0, 0, 0, 0, 0]},
    "Member": {
        "Name": "foobar",
        "Addr": "10.1.10.12",
        "Port": 8301,
        "Tags": {"dc": "dc1", "id": "40e4a748-2192-161a-0510-9bf59fe950b5", "role": "consul"},
        "Status": 1,
        "ProtocolMin": 1,
        "ProtocolMax": 2,
        "ProtocolCur": 2,
        "DelegateMin": 2,
        "DelegateMax": 4,
        "DelegateCur": 4,
    },
    "Meta": {"instance_type": "i2.xlarge", "os_version": "ubuntu_16.04"},
}

STATUS_LEADER: Any = "10.1.10.12:8300"
CATALOG_DATACENTERS: Any = ["dc1", "dc2"]

CATALOG_NODE: dict[str, Any] = {
    "Node": {
        "ID": "40e4a748-2192-161a-0510-9bf59fe950b5",
        "Node": "t2-node",
        "Address": "10.1.10.12",
        "Datacenter": "dc1",
        "TaggedAddresses": {"lan": "10.1.10.12", "wan": "10.1.10.12"},
        "Meta": {"instance_type": "t2.medium"},
    },
    "Services": {
        "redis": {
            "ID": "redis",
            "Service": "redis",
            "TaggedAddresses": {
                "lan": {"address": "10.1.10.12", "port": 8000},
                "wan": {"address": "198.18.1.2", "port": 80},
            },
            "Tags": ["v1"],
            "Meta": {"redis_version": "4.0"},
            "Port": 8000,
        },
    },
}

HEALTH_STATE: list[dict[str, Any]] = [  # also the shape of /v1/health/checks/:service items
    {
        "Node": "foobar",
        "CheckID": "serfHealth",
        "Name": "Serf Health Status",
        "Status": "passing",
        "Notes": "",
        "Output": "",
        "ServiceID": "",
        "ServiceName": "",
        "ServiceTags": [],
    },
]
