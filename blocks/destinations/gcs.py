"""Google Cloud Storage as a destination, through prefect-gcp's ``GcsBucket`` block.

The service account key lives only in the referenced ``GcsBucket`` / ``GcpCredentials`` blocks; the
store is google-cloud-storage's client from those credentials (it reaches ``storage.googleapis.com``,
or the server named by ``STORAGE_EMULATOR_HOST``). Commits need generation preconditions.
"""

from __future__ import annotations

from google.auth import exceptions as auth_exceptions
from prefect_gcp import GcsBucket
from pydantic import Field

from blocks.destinations.base import BucketDestination, block_label, root_of
from blocks.mixpanel import DOCS_URL
from tasks.errors import BadCredentialsError, FatalError
from tasks.lake.gcs_store import GcsStore
from tasks.lake.store import Owner, RetryPolicy
from tasks.warehouses.tableformat import Location, Style

RIGHTS = {
    "write": "storage.objects.create",
    "read": "storage.objects.get",
    "list": "storage.objects.list",
    "delete": "storage.objects.delete",
}


class GcsDestination(BucketDestination):
    """A GCS bucket that receives Mixpanel's layout: <prefix>/<project_id>/mp_master_event/YYYY/MM/DD/."""

    _block_type_name = "Mixpanel GCS Destination"
    _documentation_url = DOCS_URL
    _description = (
        "A Google Cloud Storage bucket that receives the exported tables; the service account key stays "
        "in the referenced prefect-gcp GcsBucket block."
    )

    bucket: GcsBucket = Field(
        default=...,
        description="The prefect-gcp GcsBucket block: bucket name, folder and its GcpCredentials block "
        "(a service account with roles/storage.objectAdmin on the bucket).",
    )
    prefix: str = Field(
        default="",
        description="Folder inside the bucket (below the GcsBucket block's bucket_folder) that receives "
        "the tables; empty for the top of the bucket.",
    )
    retry_deadline_seconds: float = Field(
        default=120.0,
        gt=0,
        description="How long one Cloud Storage call is retried on throttling, 5xx answers and dropped "
        "connections (exponential backoff with jitter) before the unit of work fails.",
    )

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            initial_backoff=1.0, max_backoff=32.0, deadline_seconds=self.retry_deadline_seconds
        )

    def table_location(self, project_id: int, folder: str, style: Style) -> Location:
        # delta-rs writes GCS through object_store, which uploads with the XML API that no local GCS
        # server serves (tasks/lake/gcs_store.py), so a table format on GCS could not be tested here
        raise FatalError(
            "Delta and Iceberg tables are not written on GCS: delta-rs uploads to GCS through the XML "
            "API, which no local GCS server serves, so it is untested; choose a LocalDestination, an "
            "S3Destination or an AzureBlobDestination as the block's files."
        )

    def store(self, retry: RetryPolicy | None = None) -> GcsStore:
        bucket = self.bucket.bucket
        block = block_label(self.bucket, "GcsBucket", bucket)
        try:
            client = self.bucket.gcp_credentials.get_cloud_storage_client()
        except auth_exceptions.DefaultCredentialsError as exc:  # no key in the block, no ambient identity
            raise BadCredentialsError(
                f"no Google Cloud credentials were found for {block}: set a service account key in its "
                "GcpCredentials block or run the worker as a service account."
            ) from exc
        # google-cloud-storage 3.x reads each bucket's metadata in the background to label tracing
        # spans; that needs storage.buckets.get, which an object-only service account lacks
        if getattr(client, "_bucket_metadata_cache", None) is not None:
            client._bucket_metadata_cache = None
        email = getattr(client._credentials, "service_account_email", None)
        owner = Owner(
            "Google Cloud Storage",
            f"{block} (the service account {email})" if email else block,
            f"bucket {bucket}",
            "check the service account key in its GcpCredentials block",
            "grant it roles/storage.objectAdmin on the bucket",
            RIGHTS,
        )
        root = root_of(self.bucket.bucket_folder, self.prefix)
        return GcsStore(client, bucket, root, owner, retry or self.retry_policy())
