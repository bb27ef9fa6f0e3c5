"""Training: NeMo FastConformer-TDT fine-tuning, a CPU TDT loss, launch backends."""
