"""Google Compute Engine's descriptor (see clouds/base.py: Cloud)."""

from ..base import Cloud, Shapes

CLOUD = Cloud(
    name="gce", title="GCE", where="on a GCE VM",
    provider="researchkit_py.clouds.gce.provider:GCEProvider",
    store="researchkit_py.clouds.gce.store:GCSStore", scheme="gs",
    vm_modules=("clouds/http.py", "clouds/gce/vm.py"), vm_bucket="researchkit_py.clouds.gce.vm:VMBucket",
    vm_store="researchkit_py.clouds.gce.rest:GCSRestStore", vm_store_modules=("clouds/gce/rest.py",),
    store_modules=("clouds/gce/store.py",),
    # on-demand USD per hour, us-central1, as listed on 2026-11-01
    prices={"n2-standard-4": 0.19, "n2-standard-16": 0.78, "n2-standard-64": 3.11, "n2-highmem-16": 1.05,
            "n2-highmem-64": 4.19, "g2-standard-4": 0.71, "a2-highgpu-1g": 3.67, "a2-highgpu-8g": 29.39},
    shapes=Shapes("n2-standard-4", "n2-standard-64", "n2-highmem-64", "g2-standard-4", "a2-highgpu-8g"),
    defaults={
        "GCE_PROJECT": "",
        "GCE_ZONE": "us-central1-a",
        "GCE_ZONES": "",
        "GCE_MACHINE_TYPE": "n2-standard-4",
        "GCE_IMAGE_FAMILY": "ubuntu-2204-lts",
        "GCE_IMAGE_PROJECT": "ubuntu-os-cloud",
        "GCE_DISK_GB": "50",
        "GCE_SERVICE_ACCOUNT": "default",
        "GCE_SPOT": "",
        "RK_GCE_API_ENDPOINT": "",
        "GOOGLE_CLOUD_PROJECT": "",
        "STORAGE_EMULATOR_HOST": "",
        "CLOUDSDK_CONFIG": "",
    },
)
