"""Planning a pod run without running it: compile the train step for a TPU topology on any host
(`compile_check`), the chips and their roofline (`topology`), and what the compiled HLO holds
(`hlo_stats`: memory, collectives, recompute)."""
