"""The demo: a tiny Llama family (base + two specialists) trained offline on synthetic string
tasks, those tasks' lm-eval files, and the family's score table."""
