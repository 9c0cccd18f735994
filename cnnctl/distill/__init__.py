"""`cnnctl distill`: a small student trained on what an accurate teacher answers (docs/distill.md).

teacher.py loads the teacher (a run or an exported ONNX file) and runs it; views.py draws each
training view once and converts it to both models' preprocessing (and keeps the teacher's answers
where the views are fixed); loss.py is the distillation loss; latency.py measures candidate
students in onnxruntime and picks the one the latency budget allows; report.py compares the two;
run.py joins them to the trainer through its `Host`.
"""
