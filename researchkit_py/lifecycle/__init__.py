"""The run lifecycle every provider shares, client side: launch (launch.py), read and wait
(monitor.py), pull (pull.py), terminate and reap (reaper.py), all with one Context."""

from .context import Context
from .launch import Launch, LaunchOptions, dry_run_report, launch, plan_launch, worst_case_cost
from .monitor import ensure_gone, has_log, read_heartbeat, read_log, read_manifest, run_state, wait, wait_quietly
from .pull import PULL_STATE, check_output_dir, pull, read_pull_state
from .reaper import reap, reap_if_due, terminate
from .runlist import list_runs

__all__ = ["PULL_STATE", "Context", "Launch", "LaunchOptions", "check_output_dir", "dry_run_report", "ensure_gone", "has_log", "launch",
           "list_runs", "plan_launch", "pull", "reap", "reap_if_due", "read_heartbeat", "read_log", "read_manifest",
           "read_pull_state", "run_state", "terminate", "wait", "wait_quietly", "worst_case_cost"]
