"""Where the process sits in the job (launcher environments), the one process-group start and stop, signals."""
