"""What the EC2 provider uses of boto3 (a client, its credential error); the client's S3 store
shares the error's advice."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ...errors import KitError
from ...settings import Settings


def aws_client(service: str, settings: Settings | None = None, pool_size: int | None = None):
    """A boto3 client. The endpoint is passed explicitly: older boto3 releases (Debian's
    python3-boto3 among them) ignore AWS_ENDPOINT_URL, and a value from the env file never
    reaches the SDK's own environment lookup."""
    import boto3
    from botocore.config import Config

    settings = settings or Settings(read_file=False)
    config = Config(retries={"mode": "standard", "max_attempts": 3},
                    **({"max_pool_connections": pool_size} if pool_size else {}))
    region = settings.get("AWS_REGION") or settings.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.session.Session().client(service, region_name=region, config=config,
                                          endpoint_url=settings.get("AWS_ENDPOINT_URL") or None)


def error_code(exc: BaseException) -> str:
    return exc.response.get("Error", {}).get("Code", "") if hasattr(exc, "response") else ""


NO_CREDENTIALS = "run `aws configure` or `aws sso login`, or set AWS_PROFILE"


@contextmanager
def no_credentials_is_kit_error() -> Iterator[None]:
    from botocore import exceptions

    try:
        yield
    except exceptions.NoCredentialsError:
        raise KitError(f"no AWS credentials found; {NO_CREDENTIALS}") from None
