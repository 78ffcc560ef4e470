"""The lr-by-step sweep shared by every arm: CCA (``peft_cca.amplify``) and the LoRA baseline
(``peft_cca.baselines``) both train through it, so they are validated, bounded and chosen alike.

- :mod:`~peft_cca.sweep.callbacks`: ``BestStepCallback`` (any ``Trainer``), the validation schedule, trainable state;
- :mod:`~peft_cca.sweep.runs`: ``RunResult``, ``SweepResult``, the best-run rule, the meters, the summary file.
"""
