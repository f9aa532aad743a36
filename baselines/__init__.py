"""cmbbench reference baselines, registered only through cmbbench's public API."""
