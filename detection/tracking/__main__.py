"""`python -m detection.tracking <spool> ...`: sends the records a run's tracking store did not take (each
names its store and run), in order, and removes the spool once all are sent."""

import sys
from pathlib import Path

from detection.tracking.mlflow_tracker import send_kept_record
from detection.tracking.outbox import replay_spool

for spool_file in sys.argv[1:]:
    print(f"{spool_file}: {replay_spool(Path(spool_file), send_kept_record)} records sent")
