"""Generation: next-code filters, the jitted KV-cached sampler, and the writer of its pairs."""
