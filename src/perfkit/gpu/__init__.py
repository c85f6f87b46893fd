"""perfkit on the target GPU: every stage's smoke path on the current device (`check`, one process per stage with
a time cap; `stage_child` runs one), and a load-once decode probe for shapes too big to reload per server (`probe`).

`perfkit gpu-check` and `perfkit gpu-probe` are the commands; their JSON and pages go under docs/gpu/.
"""
