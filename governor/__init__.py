"""The governor: applies the planner's decisions to GPUs and Triton.

The clock loop, the GPU backends (NVML, observe-only, the twin's control API),
leadership and fencing, the watchdog, the instance scaler and Triton's repository
client, and its own metrics. It reads the scoreboard (slo_scoreboard/) and asks the
planner (slo_planner/); it imports nothing of the HTTP gateway.
"""
