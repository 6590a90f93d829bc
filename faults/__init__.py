"""The fault suite of issue 8 ("Proven by"): real processes, real faults, one result line per scenario.

    python -m faults [--short] [--only NAME,...] [--keep]    (make faults; the short mode runs in make test)

See docs/reliability.md for what each scenario does, what it expects and the figures of the last full run.
"""
