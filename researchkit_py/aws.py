"""What the S3 store and the EC2 provider share: a boto3 client, and the credential error."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import KitError


def aws_client(service: str, pool_size: int | None = None):
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": "standard", "max_attempts": 3},
                    **({"max_pool_connections": pool_size} if pool_size else {}))
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.session.Session().client(service, region_name=region, config=config)


def error_code(exc: BaseException) -> str:
    return exc.response.get("Error", {}).get("Code", "") if hasattr(exc, "response") else ""


@contextmanager
def no_credentials_is_kit_error() -> Iterator[None]:
    from botocore import exceptions

    try:
        yield
    except exceptions.NoCredentialsError:
        raise KitError("no AWS credentials found; run `aws configure` or `aws sso login`, or set AWS_PROFILE") from None
