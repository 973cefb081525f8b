"""The user-facing entry `python -m slurm.submit` (the command itself is `slurm.cli`)."""

# Nothing is defined here, so the class submitit pickles is always slurm.job.TrainingRun, never __main__'s.
from slurm.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
