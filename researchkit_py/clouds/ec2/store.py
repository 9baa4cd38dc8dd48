"""Amazon S3 as the client reaches it: the REST API through the standard library's HTTP (the
store the VM's transfers use, rest.py), signed with the user's credentials as botocore's chain
finds them (environment, profiles, SSO, a credential process, …). AWS_ENDPOINT_URL points it
at moto in tests.

Why not boto3's S3 client: creating it was ~0.35 s of CPU in every `cloud-run` call on EC2
(the credential chain alone is half that, and calls that only read the bucket need nothing
else); docs/decisions.md ("EC2") has the measurements."""

from __future__ import annotations

from ...errors import KitError
from ...settings import Settings
from .aws import NO_CREDENTIALS
from .rest import S3RestStore
from .vm import VMBucket


class UserCredentials:
    """What InstanceRole is on a VM, for this machine: the credentials botocore resolves (its
    refreshable ones renewed as botocore renews them). The region is the settings' (VMBucket)."""

    def __init__(self):
        self._resolved = None

    def credentials(self) -> dict:
        import botocore.session
        from botocore import exceptions

        try:
            if self._resolved is None:
                self._resolved = botocore.session.Session().get_credentials()
                if self._resolved is None:
                    raise KitError(f"no AWS credentials found; {NO_CREDENTIALS}")
            frozen = self._resolved.get_frozen_credentials()  # a refresh may fail too
        except exceptions.BotoCoreError as e:  # a broken profile, an SSO session expired, ...
            raise KitError(f"your AWS credentials could not be read ({e}); {NO_CREDENTIALS}") from None
        return {"AccessKeyId": frozen.access_key, "SecretAccessKey": frozen.secret_key, "Token": frozen.token or ""}

    def region(self) -> str:
        # Asked only where the settings name no region: S3 names the bucket's own in its
        # answer, and VMBucket.call follows it.
        return "us-east-1"


class ClientBucket(VMBucket):
    """The run's bucket as this machine reaches it: the requests of the VM's bucket, with the
    user's credentials instead of an instance profile's."""

    DENIED = "check your AWS credentials and the bucket policy"

    def __init__(self, bucket: str, prefix: str, settings: Settings):
        super().__init__(bucket, prefix, settings)
        self.role = UserCredentials()


class S3Store(S3RestStore):
    bucket_class = ClientBucket
