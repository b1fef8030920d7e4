"""LightningModules (thin: losses, logging, optimisers) and checkpoint export/import."""
