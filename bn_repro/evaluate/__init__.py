"""`bn-repro evaluate`: trained runs evaluated on their own, at 1 or 144 crops, alone or as an
ensemble (run.py), with records in each run's evaluations.jsonl (evaluations.py)."""
