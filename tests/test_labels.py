"""Labels and replica names (hybridorch.core.labels): one function per form of a replica's name, and the
external names built from them stay exactly what they were."""
from __future__ import annotations

import re

from hybridorch.backends import docker as docker_backend
from hybridorch.core import labels
from hybridorch.core.schema import DNS_LABEL
from hybridorch.render.domain import domain_name


def test_every_form_of_a_replica_name() -> None:
    assert [labels.replica_name("web", i) for i in range(2)] == ["web-0", "web-1"]
    assert labels.replica_names("vm", 1) == ["vm"] and labels.replica_names("vm", 3) == ["vm-0", "vm-1", "vm-2"]
    assert [labels.replica_path("vm", i) for i in range(3)] == ["vm", "vm-1", "vm-2"]
    assert [labels.replica_dir("vm", i) for i in range(3)] == ["vm", "vm.1", "vm.2"]
    assert [labels.replica_title("vm", i) for i in range(2)] == ["vm", "vm replica 1"]
    assert labels.replica_ref("web", 1) == "web/1"
    # a replica's state dir can never be another workload's (a workload name is a DNS label, without '.')
    assert not re.fullmatch(DNS_LABEL, labels.replica_dir("web", 1))


def test_engine_names_are_built_from_them_and_unchanged() -> None:
    assert docker_backend.container_name("shop", "web", 1) == "shop-web-1"
    assert docker_backend.volume_name("shop", "db", 1, "data") == "hybridorch-shop-db-1-data"
    assert domain_name("shop", "ledger", 0) == "hyb-shop-ledger-0"
    assert docker_backend.LABEL_REPLICA == labels.LABEL_REPLICA == "hybridorch.dev/replica"
