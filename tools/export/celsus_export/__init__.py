"""celsus_export: turns the original Celsus_PLI PyTorch checkpoints into model bundles for the Rust
services, verified against PyTorch and run through the services. See tools/export/README.md."""

__version__ = "1.0.0"
