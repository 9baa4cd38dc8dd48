"""Google Compute Engine's descriptor (see clouds/base.py: Cloud)."""

from ..base import Cloud, Shapes, gpu_shapes

CLOUD = Cloud(
    name="gce", title="GCE", where="on a GCE VM",
    provider="researchkit_py.clouds.gce.provider:GCEProvider",
    store="researchkit_py.clouds.gce.store:GCSStore", scheme="gs",
    vm_modules=("clouds/http.py", "clouds/gce/vm.py"), vm_bucket="researchkit_py.clouds.gce.vm:VMBucket",
    vm_store="researchkit_py.clouds.gce.rest:GCSRestStore", vm_store_modules=("clouds/gce/rest.py",),
    store_modules=("clouds/http.py", "clouds/gce/vm.py", "clouds/gce/rest.py", "clouds/gce/store.py"),
    # On-demand USD per hour in us-central1. CPU types as listed on 2026-11-01; GPU types taken on
    # 2026-11-23 from the list prices of cloud.google.com/compute/gpus-pricing (as public price
    # tables reproduce them), the G2 types with 2-8 L4s computed from the G2 rates ($0.5600 per
    # L4, $0.1468 per 4 vCPUs with 16 GB). Approximate: for comparing and capping;
    # RK_PRICE_PER_HOUR overrides.
    prices={"n2-standard-4": 0.19, "n2-standard-16": 0.78, "n2-standard-64": 3.11, "n2-highmem-16": 1.05,
            "n2-highmem-64": 4.19,
            "n1-standard-4": 0.19, "n1-standard-8": 0.38, "n1-standard-16": 0.76, "n1-standard-32": 1.52,
            "n1-standard-64": 3.04,
            "g2-standard-4": 0.7068, "g2-standard-24": 2.0008, "g2-standard-48": 4.0016, "g2-standard-96": 8.0033,
            "a2-highgpu-1g": 3.6734, "a2-highgpu-2g": 7.3468, "a2-highgpu-4g": 14.6935, "a2-highgpu-8g": 29.3871,
            "a2-ultragpu-1g": 5.0688, "a2-ultragpu-2g": 10.1376, "a2-ultragpu-4g": 20.2752,
            "a2-ultragpu-8g": 40.5504,
            "a3-highgpu-1g": 11.0612, "a3-highgpu-2g": 22.1225, "a3-highgpu-4g": 44.245, "a3-highgpu-8g": 88.49},
    # per GPU attached to an N1 machine type, same source and date
    accelerator_prices={"nvidia-tesla-t4": 0.35, "nvidia-tesla-v100": 2.48, "nvidia-tesla-p100": 1.46},
    shapes=Shapes("n2-standard-4", "n2-standard-64", "n2-highmem-64", gpu="L4"),
    machine_setting="GCE_MACHINE_TYPE",
    gpus=(
        *gpu_shapes("L4", {1: "g2-standard-4", 2: "g2-standard-24", 4: "g2-standard-48", 8: "g2-standard-96"},
                    "nvidia-l4"),
        *gpu_shapes("A100", {n: f"a2-highgpu-{n}g" for n in (1, 2, 4, 8)}, "nvidia-tesla-a100"),
        *gpu_shapes("A100-80GB", {n: f"a2-ultragpu-{n}g" for n in (1, 2, 4, 8)}, "nvidia-a100-80gb"),
        # A3 High with fewer than 8 H100s is offered as spot (or flex-start) capacity only
        *gpu_shapes("H100", {n: f"a3-highgpu-{n}g" for n in (1, 2, 4, 8)}, "nvidia-h100-80gb",
                    spot_only=(1, 2, 4)),
        *gpu_shapes("T4", {1: "n1-standard-4", 2: "n1-standard-8", 4: "n1-standard-16"}, "nvidia-tesla-t4",
                    attach=True),
        *gpu_shapes("V100", {1: "n1-standard-8", 2: "n1-standard-16", 4: "n1-standard-32", 8: "n1-standard-64"},
                    "nvidia-tesla-v100", attach=True),
        *gpu_shapes("P100", {1: "n1-standard-4", 2: "n1-standard-8", 4: "n1-standard-16"}, "nvidia-tesla-p100",
                    attach=True),
    ),
    gpu_machine_types=r"(a2|a3|a4|a4x|g2|g4)-",
    defaults={
        "GCE_PROJECT": "",
        "GCE_ZONE": "us-central1-a",
        "GCE_ZONES": "",
        "GCE_MACHINE_TYPE": "n2-standard-4",
        "GCE_IMAGE_FAMILY": "ubuntu-2204-lts",
        "GCE_IMAGE_PROJECT": "ubuntu-os-cloud",
        "GCE_GPU_IMAGE_FAMILY": "common-cu129-ubuntu-2204-nvidia-580",
        "GCE_GPU_IMAGE_PROJECT": "deeplearning-platform-release",
        "GCE_DISK_GB": "50",
        "GCE_GPU_DISK_GB": "100",
        "GCE_SERVICE_ACCOUNT": "default",
        "GCE_SPOT": "",
        "RK_GCE_API_ENDPOINT": "",
        "GOOGLE_CLOUD_PROJECT": "",
        "STORAGE_EMULATOR_HOST": "",
        "CLOUDSDK_CONFIG": "",
    },
)
