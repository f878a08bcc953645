#!/usr/bin/env python3
"""llama.cpp's speed on the same files and measures as bench/models_bench.cpp, as the peer in the
same run: pp512 (512 tokens in one batch from an empty cache) and tg128 (128 tokens one at a
time), tokens/s as mean +- sd over repetitions, 1 and 2 threads.

Usage: build/pyenv/bin/python bench/llama_cpp_bench.py MODEL.gguf [MODEL.gguf ...] [-r 3]
"""
import argparse
import random
import statistics
import sys
import time

try:
    import llama_cpp
except ImportError as e:
    print(f"llama_cpp_bench: {e} (install with scripts/llm-env.sh)", file=sys.stderr)
    sys.exit(77)


def tokens_per_second(llm, tokens, one_at_a_time):
    llm.reset()
    start = time.perf_counter()
    if one_at_a_time:
        for t in tokens:
            llm.eval([t])
    else:
        llm.eval(tokens)
    return len(tokens) / (time.perf_counter() - start)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("-r", "--repetitions", type=int, default=3)
    args = ap.parse_args()
    rng = random.Random(1)
    for path in args.models:
        for threads in (1, 2):
            llm = llama_cpp.Llama(model_path=path, n_ctx=640, n_batch=512, n_ubatch=512, n_threads=threads,
                                  n_threads_batch=threads, verbose=False)
            vocab = llm.n_vocab()
            for name, n, single in (("pp512", 512, False), ("tg128", 128, True)):
                tokens = [rng.randrange(vocab) for _ in range(n)]
                tokens_per_second(llm, tokens, single)  # warm-up
                runs = [tokens_per_second(llm, tokens, single) for _ in range(args.repetitions)]
                sd = statistics.stdev(runs) if len(runs) > 1 else 0.0
                print(f"llama.cpp {path.split('/')[-1]} {name} threads={threads}: "
                      f"{statistics.mean(runs):.1f} +- {sd:.1f} tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
