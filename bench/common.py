"""Constants shared by the benchmark parent and its children (kept import-free so the parent stays small)."""

# The sandbox's default project and service account (see sandbox/config.py).
USERNAME = "sandbox-user"
SECRET = "sandbox-secret"
PROJECT_ID = 1

# Exit codes of a measured child that the parent tells apart: a wrong result must stop the benchmark,
# an ijson backend that cannot read the data is a finding to report (and measure with another backend).
EXIT_MISMATCH = 2
EXIT_BACKEND_ABORTED = 3
