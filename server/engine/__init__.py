"""Policy engines behind :class:`strategies.base.Engine`: the in-process vLLM one (:mod:`server.engine.vllm_engine`)."""
