"""Where a table format finds a project's tables: derived from the file destination block it wraps.

The storage options carry the same credentials the file destination uses (the AwsCredentials block's
keys, refreshed by boto3 at connect time); they are never logged (``Location`` hides them in repr).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from blocks.destinations.base import root_of
from blocks.destinations.local import LocalDestination
from tasks.errors import FatalError
from tasks.lake.layout import Layout
from tasks.warehouses.tableformat import Location

# the storage options each library reads: key id, secret, region, session token, endpoint
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


def location_of(files: Any, project_id: int, folder: str, style: str = "delta") -> Location:
    """``<root>/<project_id>/<folder>`` and the options ``style`` ("delta" or "iceberg") reads."""
    own = Layout(str(project_id)).table_format_prefix(folder)
    if isinstance(files, LocalDestination):
        return Location(str(Path(files.path).expanduser().resolve() / own))
    if type(files).__name__ != "S3Destination":  # the s3 extra may not be installed: no import
        raise FatalError(
            f"table formats are written on a local folder or S3 so far, not on a {type(files).__name__}: "
            "choose a LocalDestination or an S3Destination as the block's files."
        )
    _, found, region = files.aws_session()  # the S3 destination's own lookup and its error sentence
    frozen = found.get_frozen_credentials()
    endpoint = files.bucket.credentials.aws_client_parameters.endpoint_url
    root = root_of(files.bucket.bucket_folder, files.prefix, own)
    uri = f"s3://{files.bucket.bucket_name}/{root}"
    values = (frozen.access_key, frozen.secret_key, region, frozen.token, endpoint and str(endpoint))
    options = {key: value for key, value in zip(OPTION_KEYS[style], values, strict=True) if value}
    if style == "delta" and endpoint:
        options["AWS_ALLOW_HTTP"] = "true" if str(endpoint).startswith("http:") else "false"
    return Location(uri, options)
