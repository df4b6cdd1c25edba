"""A real S3 on loopback for tests: moto's server (moto 5.2, a subprocess) behind a tiny fault proxy.

* moto runs with IAM enforcement switched on (``POST /moto-api/reset-auth 0``, after two IAM users
  were created while auth was still off): a wrong key gets a real ``InvalidAccessKeyId``, a
  read-only user a real ``AccessDenied``.
* one moto serves the whole run (tests/stores/shared.py): each test makes buckets of its own;
* every request of the blocks goes through ``FaultProxy``, which forwards bytes unchanged (the
  SigV4 signature covers the Host header, kept as sent) and can answer the next N requests with a
  5xx or drop their connection: moto has no fault injection of its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from prefect_aws import AwsCredentials, S3Bucket

from blocks.destinations.s3 import S3Destination
from tests.stores.process import free_port
from tests.stores.process import stop as stop_process
from tests.stores.proxy import FaultProxy
from tests.stores.shared import shared_server

REGION = "us-east-1"
_ERROR_CODES = {500: "InternalError", 502: "BadGateway", 503: "SlowDown", 504: "GatewayTimeout"}


@dataclass
class S3Server:
    """What tests need: the endpoint blocks use (the proxy), moto's own URL, and IAM keys."""

    endpoint_url: str
    moto_url: str
    access_key_id: str  # a user with s3:* on every bucket
    secret_access_key: str
    reader_key_id: str  # a user with s3:GetObject and s3:ListBucket only
    reader_secret: str
    proxy: FaultProxy

    def client(self, service: str = "s3") -> Any:
        """An admin client straight to moto (no proxy, no faults): for arranging and checking."""
        return boto3.client(
            service,
            endpoint_url=self.moto_url,
            region_name=REGION,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )


def _start_moto(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m moto.server -H 127.0.0.1 -p PORT``; a port taken meanwhile means another try."""
    for _ in range(3):
        port = free_port()
        with log.open("ab") as out:
            cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
            process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while process.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/moto-api/", timeout=2) as answer:
                    if answer.status == 200:
                        return process, url
            except OSError:
                time.sleep(0.1)
        stop_process(process)
    raise RuntimeError(f"moto server did not start: see {log}")


def _user_with_policy(iam: Any, name: str, actions: list[str]) -> dict[str, str]:
    iam.create_user(UserName=name)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
    iam.put_user_policy(UserName=name, PolicyName=name, PolicyDocument=json.dumps(policy))
    return iam.create_access_key(UserName=name)["AccessKey"]


def _enforce_iam(moto_url: str) -> tuple[dict[str, str], dict[str, str]]:
    """Create an admin and a reader while auth is off, then make moto check every signature."""
    iam = boto3.client(
        "iam",
        endpoint_url=moto_url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    admin = _user_with_policy(iam, "pipeline", ["s3:*", "glue:*"])
    reader = _user_with_policy(iam, "reader", ["s3:GetObject", "s3:ListBucket"])
    request = urllib.request.Request(
        f"{moto_url}/moto-api/reset-auth",
        data=b"0",  # the first 0 requests go unchecked: from now on, every request is
        headers={"Content-Type": "application/octet-stream"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200
    return admin, reader


def _start_moto_with_users(workdir: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    process, moto_url = _start_moto(workdir / "moto.log")
    try:
        admin, reader = _enforce_iam(moto_url)
    except BaseException:
        stop_process(process)
        raise
    keys = {"admin": admin, "reader": reader}
    users = {who: [key["AccessKeyId"], key["SecretAccessKey"]] for who, key in keys.items()}
    return process, {"moto_url": moto_url, "users": users}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """The run's moto (started by the first worker that needs it) behind this worker's own proxy."""
    moto = shared_server("moto", _start_moto_with_users)
    admin, reader = moto["users"]["admin"], moto["users"]["reader"]
    proxy = FaultProxy(int(moto["moto_url"].rsplit(":", 1)[1]), s3_error).serve_in_background()
    try:
        yield S3Server(proxy.url, moto["moto_url"], admin[0], admin[1], reader[0], reader[1], proxy)
    finally:
        proxy.stop()


def s3_error(status: int) -> tuple[dict[str, str], bytes]:
    code = _ERROR_CODES.get(status, "ServiceUnavailable")
    xml = f"<Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>"
    return {"Content-Type": "application/xml"}, xml.encode()


def make_s3_destination(
    server: S3Server,
    bucket: str | None = None,
    bad_credentials: bool = False,
    prefix: str = "",
    reader: bool = False,
    **fields: Any,
) -> S3Destination:
    """An unsaved block on ``bucket`` (a fresh one if None); ``reader``: the read-only IAM user."""
    if bucket is None:
        bucket = f"mp-test-{uuid.uuid4().hex[:16]}"
        server.client().create_bucket(Bucket=bucket)
    key, secret = (server.reader_key_id, server.reader_secret) if reader else (None, None)
    if bad_credentials:
        key, secret = "AKIAWRONGWRONGWRONG1", "not-the-secret"
    credentials = AwsCredentials(
        aws_access_key_id=key or server.access_key_id,
        aws_secret_access_key=secret or server.secret_access_key,
        region_name=REGION,
        aws_client_parameters={"endpoint_url": server.endpoint_url},
    )
    return S3Destination(
        bucket=S3Bucket(bucket_name=bucket, credentials=credentials), prefix=prefix, **fields
    )


def inject_s3_errors(server: S3Server, status: int, count: int) -> None:
    """The next ``count`` requests get ``status`` (a 5xx) from the proxy; ``status=0`` drops them."""
    server.proxy.fail(status, count)
