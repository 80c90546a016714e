"""`throttllem replay`: every policy on identical work, in the twin's virtual time.

workload.py turns a trace into requests (rate scaling, truncation, length predictions);
policies.py holds the clock and admission policies; simulate.py steps the engines under
one policy; report.py sets the scene (the engine's saturation, the SLO regime, max's
goodput capacity) and turns runs into the fixed JSON and a Markdown table; frontier.py
runs every policy over a grid of scenes and loads, frontier_summary.py reports it.
"""
