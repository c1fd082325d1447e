"""IAMFlow identity-aware memory agents, re-implemented in our own code (pure-logic core).

``registry`` assigns persistent per-script global IDs to extracted characters; ``id_memory`` holds
the archived frame records, the capacity-4 ID memory (update rule and greedy set-cover retrieval at
each prompt start) and a trace of the frames active per prompt. See
``/work/shared/docs/iamflow-reference.md`` §3.2-§3.8 and §9.
"""
