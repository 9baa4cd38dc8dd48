"""Google Cloud Storage as the client reaches it: the JSON API through the standard library's
HTTP (the store the VM's transfers use, rest.py), authorized by google-auth with the user's
Application Default Credentials, or by nothing against an emulator (STORAGE_EMULATOR_HOST).
Only creating a bucket uses google-cloud-storage, imported then.

Why not the SDK for everything: its import and client were a quarter of a first pull, and its
per-request CPU (requests, google-resumable-media) the rest of what made a pull CPU-bound
(bench/results/gcs-pull-profile.md)."""

from __future__ import annotations

import math
import time
from datetime import timezone
from urllib.parse import quote

from ...errors import KitError
from ...settings import Settings
from .rest import GCSRestStore
from .vm import VMBucket

SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"


def gcs_client(settings: Settings | None = None):
    """A google-cloud-storage client; anonymous against an emulator (STORAGE_EMULATOR_HOST)."""
    from google.cloud import storage

    settings = settings or Settings(read_file=False)
    project = settings.get("GCE_PROJECT") or settings.get("GOOGLE_CLOUD_PROJECT") or None
    emulator = settings.get("STORAGE_EMULATOR_HOST")
    try:
        if emulator:
            from google.auth.credentials import AnonymousCredentials

            return storage.Client(project=project or "researchkit-local", credentials=AnonymousCredentials(),
                                  client_options={"api_endpoint": emulator})
        return storage.Client(project=project)
    except Exception as e:  # google.auth.exceptions.DefaultCredentialsError and friends
        if e.__class__.__name__ == "DefaultCredentialsError":
            raise _no_credentials() from None
        raise


def _no_credentials() -> KitError:
    return KitError("no Google credentials found; run `gcloud auth application-default login` "
                    "or set GOOGLE_APPLICATION_CREDENTIALS to a key file")


class ClientBucket(VMBucket):
    """The run's bucket as this machine reaches it: the requests of the VM's bucket, with the
    user's credentials instead of a service account's."""

    DENIED = ("check the bucket's permissions for your account (`gcloud auth application-default login` "
              "renews expired credentials)")

    def __init__(self, bucket: str, prefix: str, settings: Settings):
        super().__init__(bucket, prefix, settings)
        self.emulator = bool(settings.get("STORAGE_EMULATOR_HOST"))
        self._credentials = None

    def _authorization(self) -> tuple[dict[str, str], float]:
        """google-auth's headers (the token and, for a user's credentials, their quota project),
        renewed a minute before the token expires; none against an emulator, as the SDK's
        AnonymousCredentials sent none."""
        if self.emulator:
            return {}, math.inf
        import google.auth
        from google.auth import exceptions
        from google.auth.transport.requests import Request

        try:
            if self._credentials is None:
                self._credentials, _ = google.auth.default(scopes=[SCOPE])
            self._credentials.refresh(Request())
        except exceptions.DefaultCredentialsError:
            raise _no_credentials() from None
        except exceptions.RefreshError as e:
            raise KitError(f"your Google credentials were refused ({e}); run "
                           "`gcloud auth application-default login`") from None
        except exceptions.TransportError as e:  # the token endpoint unreachable: worth a retry
            raise ConnectionError(f"fetching a Google access token: {e}") from e
        headers: dict[str, str] = {}
        self._credentials.apply(headers)
        expiry = self._credentials.expiry  # naive, in UTC
        at = expiry.replace(tzinfo=timezone.utc).timestamp() if expiry else time.time() + 300
        return headers, at - 60


class GCSStore(GCSRestStore):
    bucket_class = ClientBucket

    # --- bucket administration (used by `detached` and `setup`) ----------------------
    def ensure_bucket(self, location: str) -> bool:
        """Create the bucket with uniform access and public access prevention; True if created.
        Whether it exists is one request; only creating it needs the SDK."""
        resp = self.vm.call("GET", f"storage/v1/b/{quote(self.vm.bucket, safe='')}", {"fields": "name"},
                            ok=(404,))
        if resp.status != 404:
            return False
        from google.api_core import exceptions

        client = gcs_client(self.settings)
        bucket = client.bucket(self.vm.bucket)
        bucket.iam_configuration.uniform_bucket_level_access_enabled = True
        bucket.iam_configuration.public_access_prevention = "enforced"
        try:
            client.create_bucket(bucket, location=location)
        except exceptions.Conflict:  # made meanwhile (another launch)
            return False
        return True
