"""The planner's decisions, pure and typed: whether a board keeps its promises at a clock,
whether a request may join it, the lowest clock that keeps them, iteration times and
their online correction, and the instance-scaling rule. No I/O; time is an argument."""
