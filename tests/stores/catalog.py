"""Every destination the suites run against, behind one fixture each, so one test covers them all.

``store``: a factory of blocks on a fresh location of local, S3, GCS or Azure (the same location per call).
``remote``: the object stores only, with what error tests need: a block with wrong credentials, a block on
a missing bucket, and fault injection in front of the store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from blocks.destinations.base import DestinationBlock
from blocks.destinations.catalog import AnyDestination
from blocks.destinations.local import LocalDestination
from tests.stores.azure import WRONG_KEY, make_azure_destination
from tests.stores.gcs import make_gcs_destination
from tests.stores.proxy import FaultProxy
from tests.stores.s3 import make_s3_destination

StoreFactory = Callable[[], DestinationBlock]
STORES = ["local", "s3", "gcs", "azure"]
REMOTES = ["s3", "gcs", "azure"]


@dataclass(frozen=True)
class Remote:
    kind: str
    make: Callable[..., AnyDestination]  # make(name=None, bad_credentials=False, prefix="")
    proxy: FaultProxy  # every request of ``make``'s blocks goes through it
    secret: str  # a credential string that must never show in an error


def remote_for(kind: str, request: pytest.FixtureRequest) -> Remote:
    if kind == "s3":
        s3 = request.getfixturevalue("s3_server")

        def make_s3(name: str | None = None, **options: object) -> AnyDestination:
            return make_s3_destination(s3, bucket=name, **options)  # type: ignore[arg-type]

        return Remote(kind, make_s3, s3.proxy, "not-the-secret")
    if kind == "gcs":
        gcs = request.getfixturevalue("gcs_server")

        def make_gcs(name: str | None = None, **options: object) -> AnyDestination:
            return make_gcs_destination(gcs, bucket=name, **options)  # type: ignore[arg-type]

        return Remote(kind, make_gcs, gcs.proxy, gcs.bad_service_account["private_key"][40:80])
    azure = request.getfixturevalue("azure_server")

    def make_azure(name: str | None = None, **options: object) -> AnyDestination:
        return make_azure_destination(azure, container=name, through_proxy=True, **options)  # type: ignore[arg-type]

    return Remote(kind, make_azure, azure.proxy, WRONG_KEY)


def location_of(block: DestinationBlock) -> str:
    """The bucket or container a block writes to."""
    for attribute in ("bucket_name", "bucket"):
        value = getattr(getattr(block, "bucket", None), attribute, None)
        if isinstance(value, str):
            return value
    return str(block.container)  # type: ignore[attr-defined]  # an Azure block: its class needs its extra


@pytest.fixture(params=REMOTES)
def remote(request: pytest.FixtureRequest) -> Iterator[Remote]:
    kit = remote_for(request.param, request)
    yield kit
    kit.proxy.fail(0, 0)  # no fault outlives its test


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """A factory of destination blocks that all point at the same fresh location."""
    if request.param == "local":
        yield lambda: LocalDestination(path=str(tmp_path / "dest"), create_missing=True)
        return
    kit = remote_for(request.param, request)
    name = location_of(kit.make())
    yield lambda: kit.make(name, prefix="raw")
    kit.proxy.fail(0, 0)
