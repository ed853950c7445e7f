"""Generation: the KV cache (kv_cache.py), the batched native sampler (sampling.py), stop strings
(stops.py), chat rendering (chat.py) and the continuous-batching Engine that puts them together
(scheduler.py). LLM.generate / stream run a batch of one on an Engine; the server's scheduler
thread (corelm/server/scheduler.py) drives one over all its requests."""
