"""GPU clock backends behind one interface: `GpuClock`."""
