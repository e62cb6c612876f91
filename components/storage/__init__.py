"""Storage: the state replicas share (memory or one Redis per URI), behind one guarded call;
imports only core."""
