"""Ray Jobs: job specs (jobs/*.yaml) and the `mmpretrain job` client."""
