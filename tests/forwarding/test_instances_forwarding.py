"""Which replica serves an instance: GetInstance says so from either replica, and ListInstances on
any replica shows each instance as its owner does, or, when the owner does not answer, as this
replica sees it with the owner's name."""

from __future__ import annotations

import grpc
import pytest
from grpc import aio

from service.proto.wagateway.privacy.v1 import instance_service_pb2 as ipb
from tests.helpers.harness import GLOBEX_TOKEN
from tests.helpers.in_process_replicas import Replica


async def _get(replica: Replica, name: str, token: str | None = None) -> ipb.Instance:
    response = await replica.instances.GetInstance(
        ipb.GetInstanceRequest(instance=name), metadata=replica.harness.metadata(token)
    )
    return response.instance


async def _list(replica: Replica, token: str | None = None) -> list[ipb.Instance]:
    response = await replica.instances.ListInstances(
        ipb.ListInstancesRequest(), metadata=replica.harness.metadata(token)
    )
    return list(response.instances)


async def test_get_instance_names_the_owner_from_either_replica(pair: dict[str, Replica]) -> None:
    a, b = pair["a"], pair["b"]
    for replica in (a, b):
        assert (await _get(replica, "sales")).replica == "a"
        assert (await _get(replica, "other", GLOBEX_TOKEN)).replica == "b"
    assert a.calls("/wagateway.privacy.v1.InstanceService/GetInstance") == 3


async def test_list_instances_merges_each_owners_view(pair: dict[str, Replica]) -> None:
    a, b = pair["a"], pair["b"]
    owners = {"sales": "a", "support": "b", "other": "b"}
    a.ownership.owners.update(owners)  # one table, shared by both

    for replica in (a, b):
        listed = await _list(replica)
        assert [(i.name, i.replica) for i in listed] == [("sales", "a"), ("support", "b")]
        assert listed == [await _get(replica, "sales"), await _get(replica, "support")]


async def test_list_instances_without_an_owner_answering(pair: dict[str, Replica]) -> None:
    a, b = pair["a"], pair["b"]
    await a.stop()

    listed = await _list(b)

    assert [(i.name, i.replica) for i in listed] == [("sales", "a"), ("support", "a")]
    assert [i.state for i in listed] == [ipb.INSTANCE_STATE_CONNECTED] * 2


async def test_an_unowned_instance_is_listed_without_a_replica(pair: dict[str, Replica]) -> None:
    a, b = pair["a"], pair["b"]
    del a.ownership.owners["support"]

    listed = await _list(b)

    assert [(i.name, i.replica) for i in listed] == [("sales", "a"), ("support", "")]


async def test_pairing_is_the_owners_to_answer(pair: dict[str, Replica]) -> None:
    a, b = pair["a"], pair["b"]
    pair_method = "/wagateway.privacy.v1.InstanceService/PairInstance"
    errors = []
    for replica in (a, b):
        call = replica.instances.PairInstance(
            ipb.PairInstanceRequest(instance="sales"), metadata=replica.harness.metadata()
        )
        with pytest.raises(aio.AioRpcError) as raised:
            await call.read()
        errors.append(raised.value)

    direct, forwarded = errors
    assert forwarded.code() == direct.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert forwarded.details() == direct.details()
    assert forwarded.trailing_metadata() == direct.trailing_metadata()
    assert a.calls(pair_method, "FAILED_PRECONDITION") == 2
