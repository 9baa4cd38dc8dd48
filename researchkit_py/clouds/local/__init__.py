"""The embedded provider: the identical startup script as a detached session on this machine,
with a directory as the bucket. No account, no cost."""
