"""Amazon EC2 instances and S3 buckets (s3://)."""
