"""loraedit: first-frame-guided video editing with mask-aware LoRA fine-tuning of an I2V model."""
__version__ = "0.1.0"
