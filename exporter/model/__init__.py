"""The model: per-target page state and its summaries, per-cgroup totals, process identity."""
