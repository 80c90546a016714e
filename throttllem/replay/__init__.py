"""`throttllem replay`: every policy on identical work, in the twin's virtual time.

workload.py turns a trace into requests (rate scaling, truncation, length predictions);
saturation.py measures the engine's capacity and the E2E SLO; policies.py holds the
clock and admission policies; simulate.py steps the engine under one policy; report.py
turns runs into the fixed JSON and a Markdown table.
"""
