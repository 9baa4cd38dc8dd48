"""The embedded provider's descriptor (see clouds/base.py: Cloud)."""

from ..base import Cloud

CLOUD = Cloud(
    name="local", title="LOCAL", where="on this machine through cloud-run",
    provider="researchkit_py.clouds.local.provider:LocalProvider",
    store="researchkit_py.clouds.local.store:LocalStore", scheme="",
    vm_modules=("clouds/local/vm.py",), store_modules=("clouds/local/store.py",), vm_here=True,
)
