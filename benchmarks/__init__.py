"""Benchmarks of scquery against peer methods: quality on real labelled data, speed and memory on
synthetic counts. Run `python -m benchmarks [--quick] [--only quality|speed] [--out DIR]`."""
