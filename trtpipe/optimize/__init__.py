"""Stage 2: bundle → bundle. Optimised variants (fusion, fp16, int8, int8-qdq, weight-only int4/int8), each lossy
one gated by accuracy on held-out text, plus the in-place KV graphs GPT-2 decodes with on the CPU."""
