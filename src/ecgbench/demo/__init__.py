"""``ecgbench demo``: a local gradio app to chat with trained ELMs about an ECG and collect preferences.

- :mod:`ecgbench.demo.inputs`: uploads (WFDB, CPSC 2018 ``.mat``, ``.npy``, CSV) and store records, turned
  into the ECG a model reads with the readers and signal processing of ``data prepare``;
- :mod:`ecgbench.demo.feedback`: the append-only JSONL log of preferences and ratings;
- :mod:`ecgbench.demo.app`: the page (gradio Blocks) and the models behind it;
- :mod:`ecgbench.demo.cli`: the command.
"""

#: the largest upload the page accepts, MB (``--max-upload-mb``)
DEFAULT_MAX_UPLOAD_MB = 64.0
