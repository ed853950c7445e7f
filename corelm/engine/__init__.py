"""Generation on one sequence: the KV cache (kv_cache.py), the sampler (sampling.py), the decoding
loop (generate.py), stop strings (stops.py) and chat rendering (chat.py). LLM (corelm/llm.py)
puts them together; the server's scheduler (corelm/server/scheduler.py) batches them."""
