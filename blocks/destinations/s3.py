"""Amazon S3 (or an S3-compatible store) as a destination, through prefect-aws's ``S3Bucket`` block.

Credentials, region and a custom ``endpoint_url`` live only in the referenced ``S3Bucket`` /
``AwsCredentials`` blocks; the store is obstore's ``S3Store``, fed by obstore's own boto3 credential
provider over the block's session (keys, a profile, an assumed role or the worker's IAM role,
refreshed as boto3 refreshes them). Commits
need conditional writes (``If-None-Match: *`` and ``If-Match``): S3 has them since 2024.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from obstore.auth.boto3 import Boto3CredentialProvider
from obstore.store import S3Store
from prefect_aws import S3Bucket
from pydantic import Field

from blocks.destinations.base import BucketDestination, block_label, root_of
from blocks.mixpanel import DOCS_URL
from tasks.errors import BadCredentialsError
from tasks.lake.layout import Layout
from tasks.lake.obstore_store import ObstoreStore, retry_config
from tasks.lake.store import Owner, RetryPolicy
from tasks.warehouses.tableformat import Location, Style

if TYPE_CHECKING:  # obstore's typed dicts exist in its stubs only
    from obstore.store import ClientConfig

# the options each table format's library reads: key id, secret, region, session token, endpoint
OPTION_KEYS = {
    "iceberg": ("s3.access-key-id", "s3.secret-access-key", "s3.region", "s3.session-token", "s3.endpoint"),
    "delta": (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
    ),
}

RIGHTS = {
    "write": "s3:PutObject",
    "read": "s3:GetObject",
    "list": "s3:ListBucket",
    "delete": "s3:DeleteObject",
}


class S3Destination(BucketDestination):
    """An S3 bucket that receives Mixpanel's layout: <prefix>/<project_id>/mp_master_event/YYYY/MM/DD/."""

    _block_type_name = "Mixpanel S3 Destination"
    _documentation_url = DOCS_URL
    _description = (
        "An Amazon S3 bucket (or an S3-compatible store) that receives the exported tables; credentials "
        "stay in the referenced prefect-aws S3Bucket block."
    )

    bucket: S3Bucket = Field(
        default=...,
        description="The prefect-aws S3Bucket block: bucket name, folder and its AwsCredentials block "
        "(set endpoint_url in its client parameters for an S3-compatible store).",
    )
    prefix: str = Field(
        default="",
        description="Folder inside the bucket (below the S3Bucket block's bucket_folder) that receives "
        "the tables; empty for the top of the bucket.",
    )

    def aws_session(self) -> tuple[Any, Any, str]:
        """boto3's session, its (refreshable) credentials and the region; one sentence if none are found."""
        credentials = self.bucket.credentials
        session = credentials.get_boto3_session()
        found = session.get_credentials()
        if found is None:
            block = block_label(self.bucket, "S3Bucket", self.bucket.bucket_name)
            raise BadCredentialsError(
                f"no AWS credentials were found for {block}: set an access key in its AwsCredentials "
                "block or give the worker an IAM role."
            )
        return session, found, credentials.region_name or session.region_name or "us-east-1"

    def table_location(self, project_id: int, folder: str, style: Style) -> Location:
        """``s3://`` with the keys boto3 holds now (temporary ones are refreshed at each connect)."""
        _, found, region = self.aws_session()
        frozen = found.get_frozen_credentials()
        endpoint = self.bucket.credentials.aws_client_parameters.endpoint_url
        own = Layout(str(project_id)).table_format_prefix(folder)
        uri = f"s3://{self.bucket.bucket_name}/{root_of(self.bucket.bucket_folder, self.prefix, own)}"
        values = (frozen.access_key, frozen.secret_key, region, frozen.token, endpoint and str(endpoint))
        options = {key: value for key, value in zip(OPTION_KEYS[style], values, strict=True) if value}
        if style == "delta" and endpoint:
            options["AWS_ALLOW_HTTP"] = "true" if str(endpoint).startswith("http:") else "false"
        return Location(uri, options)

    def store(self, retry: RetryPolicy | None = None) -> ObstoreStore:
        credentials = self.bucket.credentials
        bucket = self.bucket.bucket_name
        block = block_label(self.bucket, "S3Bucket", bucket)
        session, _, region = self.aws_session()
        params = credentials.aws_client_parameters
        options: dict[str, Any] = {}
        if params.endpoint_url:
            options["endpoint"] = params.endpoint_url
            options["virtual_hosted_style_request"] = False
        client: ClientConfig = (
            {"allow_http": True} if str(params.endpoint_url or "").startswith("http:") else {}
        )
        if params.verify is False:
            client["allow_invalid_certificates"] = True
        root = root_of(self.bucket.bucket_folder, self.prefix)
        retry = retry or self.retry_policy()

        # boto3 refreshes temporary credentials (an assumed role, the worker's IAM role); obstore asks
        # the provider again every few minutes, so it never holds expired ones
        provider = Boto3CredentialProvider(session, ttl=timedelta(minutes=5))
        store = S3Store(
            bucket,
            prefix=root or None,
            region=region,
            credential_provider=provider,
            client_options=client,
            retry_config=retry_config(retry),
            **options,
        )
        owner = Owner(
            "S3",
            block,
            f"bucket {bucket}",
            "check the access key ID and secret access key in its AwsCredentials block",
            "grant it in its IAM policy",
            RIGHTS,
        )
        return ObstoreStore(store, f"s3://{bucket}/{root}".rstrip("/"), owner, retry)
