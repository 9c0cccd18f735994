"""`cnnctl review`: a local page over a run's top losses and `check --labels` suspects, where a
person marks each image relabel / remove / fine (items, app), and the change log those marks
make, applied to the folder and undone (changes)."""
