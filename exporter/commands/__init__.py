"""The other commands: doctor, snapshot, demo, workload, render."""
