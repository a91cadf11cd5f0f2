"""Was tuning worth it: contenders measured on held-out notes, the gate, the report, edge cases, sweeps."""
