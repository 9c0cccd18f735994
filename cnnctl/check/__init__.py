"""The data doctor behind `cnnctl check`: files (scan), duplicates and leakage (phash,
duplicates), the report and its findings (doctor), and label issues (confident, labels).

Everything but `labels` is torch-free: a check without `--labels` never imports torch.
"""
