"""Branch coverage for the suite, started in a process when it first imports researchkit_py
from this tree. scripts/test puts a .pth in the venv that runs this file in every Python the
venv starts while COVERAGE_RESEARCHKIT_HOOK names it (COVERAGE_RESEARCHKIT_ROOT names the tree).

Why not coverage's own COVERAGE_PROCESS_START: that imports coverage in every Python start,
about 0.1 s of CPU each on Python 3.11, and a third of the suite's ~1,800 Python starts never
run this tree's code — the embedded provider's VMs run the agent unpacked under their own
root, the emulators and the VMs' one-line helpers run none. Those now pay nothing."""

import os
import sys


class StartCoverageOnFirstImport:
    """A meta path finder that finds nothing itself: at the first import of researchkit_py it
    asks the finders after it where that comes from and, if from this tree, starts coverage
    before the package's first line runs."""

    def find_spec(self, name, path=None, target=None):
        if name != "researchkit_py":
            return None
        sys.meta_path.remove(self)
        spec = None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find else None
            if spec is not None:
                break
        root = os.environ.get("COVERAGE_RESEARCHKIT_ROOT", "")
        if spec is not None and root and (spec.origin or "").startswith(os.path.join(root, "researchkit_py", "")):
            # process_startup reads the config's path from the environment; the process's
            # children must not inherit it (they start coverage here, when they need it)
            os.environ["COVERAGE_PROCESS_START"] = os.path.join(root, "pyproject.toml")
            try:
                import coverage

                coverage.process_startup()
            finally:
                del os.environ["COVERAGE_PROCESS_START"]
        return spec


sys.meta_path.insert(0, StartCoverageOnFirstImport())
