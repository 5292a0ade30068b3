"""The local cluster profile (rideshare/infra_cluster.py) with a real service on it: a
JetStream stream on three NATS nodes that loses its leader, and a PostgreSQL primary that is
killed and replaced by its synchronous standby, while the driver service keeps writing.

One cluster for the module. The failover test runs last: after it the old primary is gone
for good (it may come back only as a new standby).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from nats.aio.msg import Msg
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from driver.app import running
from protos import events
from protos.driver.v1 import driver_pb2 as pb
from protos.driver.v1 import driver_pb2_grpc
from rideshare import bus
from rideshare.infra import InfraError
from rideshare.infra_cluster import PRIMARY, ClusterInfra, node_states
from rideshare.nats_cluster import stream_leader
from rideshare.pg_standby import host_dsns, role
from rideshare.redis_client import open_redis
from rideshare.settings import InfraUrls, ServiceSettings
from tests.helpers import eventually, operator_channel

# Generous: the machine is shared, and a new stream leader takes seconds to elect.
WITHIN_S = 120.0


@pytest.fixture(scope="module")
async def cluster(infra_dir: Path) -> AsyncIterator[ClusterInfra]:
    embedded = ClusterInfra(
        infra_dir / "cluster",
        durable=False,
        # durable=False turns synchronous commit off; the standby's guarantee needs it on.
        postgres_options=("synchronous_commit=on",),
    )
    await embedded.start()
    try:
        yield embedded
    finally:
        embedded.stop()


@pytest.fixture
def urls(cluster: ClusterInfra) -> InfraUrls:
    assert cluster.urls is not None
    return cluster.urls


@contextlib.asynccontextmanager
async def driver_service(
    urls: InfraUrls, schema: str
) -> AsyncIterator[driver_pb2_grpc.DriverServiceAsyncStub]:
    settings = ServiceSettings(name="driver", infra=urls, grpc_port=0, shutdown_grace_s=1.0)
    async with (
        running(settings, schema=schema, durable=schema) as server,
        operator_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        yield driver_pb2_grpc.DriverServiceStub(channel)


async def create_driver(stub: driver_pb2_grpc.DriverServiceAsyncStub) -> str | None:
    """A new driver's id, or None when the service could not take it now (UNAVAILABLE or
    a deadline: whether it was stored is unknown, and it counts as not acknowledged)."""
    phone = "+44770" + str(uuid.uuid4().int)[:8]
    request = pb.CreateDriverRequest(
        name="Bo", phone=phone, password="correct horse battery", license_number="L-123"
    )
    try:
        driver = await stub.CreateDriver(request, timeout=15)
    except grpc.aio.AioRpcError as exc:
        if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise
        await asyncio.sleep(0.2)
        return None
    return driver.id


async def test_the_cluster_names_every_node_with_its_role(urls: InfraUrls) -> None:
    states = {node.name: node.role for node in await node_states(urls)}

    assert urls.jetstream_replicas == 3
    assert {states[f"nats-{i}"] for i in (1, 2, 3)} <= {"stream leader", "replica"}
    assert states[PRIMARY] == "primary" and states["postgres-standby"] == "standby"


async def test_a_stream_moves_to_the_replica_count_it_is_given_and_keeps_it_when_not_told(
    urls: InfraUrls, unique_name: str
) -> None:
    nc = await bus.connect(urls.nats_url, name=unique_name)
    js = nc.jetstream(timeout=10)
    try:
        await bus.ensure_stream(js, name=unique_name, subjects=[f"{unique_name}.>"], replicas=1)
        await bus.ensure_stream(js, name=unique_name, subjects=[f"{unique_name}.>"], replicas=3)

        # The new replicas catch up, and a leader is elected, after the update returns.
        async def three_current_nodes() -> bool:
            info = await js.stream_info(unique_name)
            cluster = info.cluster
            return (
                info.config.num_replicas == 3
                and cluster is not None
                and cluster.leader is not None
                and len([peer for peer in cluster.replicas or [] if peer.current]) == 2
            )

        await eventually(three_current_nodes, WITHIN_S, every_s=0.2)
        # A caller that does not say (a tool, a bench) leaves the count as it is.
        await bus.ensure_stream(js, name=unique_name, subjects=[f"{unique_name}.>"])
        kept = (await js.stream_info(unique_name)).config.num_replicas
        await js.delete_stream(unique_name)
    finally:
        await nc.close()

    assert kept == 3


async def test_killing_the_stream_leader_loses_no_event_the_outbox_had_acknowledged(
    cluster: ClusterInfra, urls: InfraUrls, unique_name: str
) -> None:
    seen: set[str] = set()
    seen_at: list[float] = []

    async def on_event(envelope: bus.Envelope, _msg: Msg) -> None:
        seen.add(envelope.aggregate_id)
        seen_at.append(time.monotonic())

    stop = asyncio.Event()
    leader: str | None = None
    nc = await bus.connect(urls.nats_url, name=unique_name)
    try:
        async with (
            asyncio.timeout(4 * WITHIN_S),
            driver_service(urls, unique_name) as stub,
            asyncio.TaskGroup() as group,
        ):
            group.create_task(
                bus.run_consumer(
                    nc.jetstream(timeout=5),
                    stream=events.STREAM,
                    durable=f"{unique_name}_probe",  # the service's own durable is unique_name
                    filter_subjects=[events.DRIVER_CREATED],
                    handler=on_event,
                    stop=stop,
                )
            )
            created = [d for d in [await create_driver(stub) for _ in range(3)] if d]
            await eventually(lambda: set(created) <= seen, WITHIN_S)
            leader = await stream_leader(nc.jetstream(timeout=10))
            assert leader is not None and leader.startswith("nats-")

            os.kill(cluster.pid(leader), signal.SIGKILL)
            killed_at = time.monotonic()
            while len(created) < 15:
                driver_id = await create_driver(stub)
                if driver_id:
                    created.append(driver_id)
            await eventually(lambda: set(created) <= seen, WITHIN_S, every_s=0.2)
            new_leader = await stream_leader(nc.jetstream(timeout=10))
            stop.set()
        first_after = min((t for t in seen_at if t > killed_at), default=float("nan"))
        print(f"\nfirst event delivered {first_after - killed_at:.1f} s after the leader died")
    finally:
        if leader is not None:
            await cluster.restart(leader)
        with contextlib.suppress(Exception):
            await nc.jetstream(timeout=10).delete_consumer(events.STREAM, f"{unique_name}_probe")
        await nc.close()

    assert new_leader is not None and new_leader != leader
    assert set(created) <= seen


async def test_after_the_primary_dies_and_the_standby_is_promoted_the_service_writes_again_and_lost_nothing(  # noqa: E501
    cluster: ClusterInfra, urls: InfraUrls, unique_name: str
) -> None:
    created: list[str] = []
    async with asyncio.timeout(4 * WITHIN_S), driver_service(urls, unique_name) as stub:
        while len(created) < 5:
            if driver_id := await create_driver(stub):
                created.append(driver_id)

        os.kill(cluster.pid(PRIMARY), signal.SIGKILL)
        killed_at = time.monotonic()
        took = await cluster.failover_postgres()
        before = len(created)
        while len(created) < before + 5:
            if driver_id := await create_driver(stub):
                created.append(driver_id)
        writes_again_s = time.monotonic() - killed_at
        print(f"\npromoted in {took:.2f} s; the service wrote again {writes_again_s:.1f} s after")

        stored = [
            await stub.GetDriver(pb.GetDriverRequest(driver_id=driver_id), timeout=15)
            for driver_id in created
        ]

    assert [d.id for d in stored] == created
    assert await role(host_dsns(urls.postgres_dsn)[1]) == "primary"
    # The old primary stays down: started again as it was, it would take writes too.
    assert PRIMARY not in cluster.dead()
    with pytest.raises(InfraError, match="new standby"):
        await cluster.restart(PRIMARY)


async def test_valkey_is_a_cluster_whose_restarted_node_rejoins_it(cluster: ClusterInfra) -> None:
    assert cluster.urls is not None
    admin = open_redis(cluster.urls.redis_url, timeout_s=5.0)
    location = open_redis(cluster.urls.for_service("location").redis_url, timeout_s=5.0)
    try:
        assert isinstance(location, RedisCluster)
        assert isinstance(admin, RedisCluster)
        key = f"loc:{{{uuid.uuid4().hex}}}:k"
        assert await location.set(key, "1")

        os.kill(cluster.pid("valkey-6"), signal.SIGKILL)
        await eventually(lambda: "valkey-6" in cluster.dead(), timeout_s=WITHIN_S)
        await cluster.restart("valkey-6")

        async def rejoined() -> bool:
            try:
                nodes = await admin.cluster_nodes()
                value = await location.get(key)
            except RedisError:
                return False
            healthy = [
                n for n in nodes.values() if n["connected"] and "fail" not in str(n["flags"])
            ]
            return len(healthy) == 6 and value == b"1"

        await eventually(rejoined, timeout_s=WITHIN_S, every_s=0.2)
    finally:
        await location.aclose()
        await admin.aclose()


async def test_a_lost_master_comes_back_after_its_replica_took_over_and_its_keys_stay(
    cluster: ClusterInfra,
) -> None:
    assert cluster.urls is not None
    location = open_redis(cluster.urls.for_service("location").redis_url, timeout_s=5.0)
    try:
        assert isinstance(location, RedisCluster)
        key = f"loc:{{{uuid.uuid4().hex}}}:k"
        assert await location.set(key, "1")
        node = location.get_node_from_key(key)
        assert node is not None
        port = node.port
        nodes = [n.address for n in await node_states(cluster.urls) if n.name.startswith("valk")]
        master = f"valkey-{nodes.index(f'127.0.0.1:{port}') + 1}"

        os.kill(cluster.pid(master), signal.SIGKILL)
        await eventually(lambda: master in cluster.dead(), timeout_s=WITHIN_S)
        await cluster.restart(master)  # returns once the replica has taken over and it rejoined

        async def kept() -> bool:
            try:
                return await location.get(key) == b"1"
            except RedisError:
                return False

        async def rejoined_as_replica() -> bool:
            assert cluster.urls is not None
            roles = {n.name: n.role for n in await node_states(cluster.urls)}
            return roles[master] == "replica"

        await eventually(kept, timeout_s=WITHIN_S, every_s=0.2)
        await eventually(rejoined_as_replica, timeout_s=WITHIN_S, every_s=0.2)
    finally:
        await location.aclose()
