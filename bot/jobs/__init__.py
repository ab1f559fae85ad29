"""Jobs: admission, submission, the runner's state machine, and the polling scheduler."""
