"""researchkit: run research experiments locally or on cloud VMs that clean up after themselves."""

__version__ = "0.1.0"
