"""ELM building blocks: LLMs, ECG and vision encoders, projectors, input representations, ELMs."""
