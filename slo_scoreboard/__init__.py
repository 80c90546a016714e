"""The scoreboard the gateway's workers and the governor share: the requests on the
engine (in memory, in Redis, or failing over between them), the instance-scaling channel,
and the board the planner reads from them."""
