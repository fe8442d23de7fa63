"""Optional extras (installed with extras), imported by nothing inside iterflow."""
