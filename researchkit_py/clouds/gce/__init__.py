"""Google Compute Engine VMs and Cloud Storage buckets (gs://)."""
