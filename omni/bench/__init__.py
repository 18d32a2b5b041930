"""Measure before optimising: `omni plan` (compile for a mesh, report memory and FLOPs), `omni
bench` (time the step, the device's peak and the input pipeline) and the muP coordinate check."""
from omni.bench.batches import real_batch, synthetic_batch
from omni.bench.coordinate_check import coordinate_check, coordinate_growth
from omni.bench.plan import plan
from omni.bench.step import bench, bench_pipeline

__all__ = ["bench", "bench_pipeline", "coordinate_check", "coordinate_growth", "plan", "real_batch",
           "synthetic_batch"]
