"""Where a table format finds a project's tables: derived from the file destination block it wraps.

The storage options carry the same credentials the file destination uses (the AwsCredentials block's
keys, refreshed by boto3 at connect time); they are never logged (``Location`` hides them in repr).
"""

from __future__ import annotations

from pathlib import Path

from blocks.destinations.base import root_of
from blocks.destinations.local import LocalDestination
from blocks.destinations.s3 import S3Destination
from tasks.errors import BadCredentialsError
from tasks.tableformat import Location

FileDestination = LocalDestination | S3Destination


def location_of(files: FileDestination, project_id: int, folder: str, style: str = "delta") -> Location:
    """``<root>/<project_id>/<folder>`` and the options ``style`` ("delta" or "iceberg") reads."""
    if isinstance(files, LocalDestination):
        return Location(str(Path(files.path).expanduser().resolve() / str(project_id) / folder))
    credentials = files.bucket.credentials
    session = credentials.get_boto3_session()
    found = session.get_credentials()
    if found is None:
        raise BadCredentialsError(
            f"no AWS credentials were found for bucket {files.bucket.bucket_name}: set an access key in its "
            "AwsCredentials block or give the worker an IAM role."
        )
    frozen = found.get_frozen_credentials()
    region = credentials.region_name or session.region_name or "us-east-1"
    endpoint = credentials.aws_client_parameters.endpoint_url
    root = root_of(files.bucket.bucket_folder, files.prefix, str(project_id), folder)
    uri = f"s3://{files.bucket.bucket_name}/{root}"
    if style == "iceberg":
        options = {"s3.access-key-id": frozen.access_key, "s3.secret-access-key": frozen.secret_key,
                   "s3.region": region}  # fmt: skip
        if frozen.token:
            options["s3.session-token"] = frozen.token
        if endpoint:
            options["s3.endpoint"] = str(endpoint)
        return Location(uri, options)
    options = {"AWS_ACCESS_KEY_ID": frozen.access_key, "AWS_SECRET_ACCESS_KEY": frozen.secret_key,
               "AWS_REGION": region}  # fmt: skip
    if frozen.token:
        options["AWS_SESSION_TOKEN"] = frozen.token
    if endpoint:
        options["AWS_ENDPOINT_URL"] = str(endpoint)
        options["AWS_ALLOW_HTTP"] = "true" if str(endpoint).startswith("http:") else "false"
    return Location(uri, options)
