#!/usr/bin/env python3
"""Tokenizes a fixed set of varied prompts with llama.cpp and writes llama.cpp's logits at every
position, for the C++ test that runs qforge on the same token ids (llama_reference_test.cpp).

Usage: llama_cpp_logits.py MODEL.gguf OUT.bin [--threads N] [--ubatch N]
Output (little-endian): b"QFLG", u32 version 1, u32 prompts, u32 n_vocab; then per prompt
u32 n_tokens, i32 tokens[n_tokens], f32 logits[n_tokens * n_vocab] (row per position).

With --perplexity TEXT --n-ctx N --chunks K it instead tokenizes TEXT once and scores it as
llama-perplexity does (windows of N tokens, BOS replacing each window's first token when the
model adds one, the second half of each window scored) and writes b"QFPP", u32 version 1,
u32 n_ctx, u32 chunks, i32 bos (-1: none), u32 n_tokens, i32 tokens[n_tokens], then per scored
position f64 log p(next token), then f64 ppl and f64 its standard error.
Exits 77 (the skip code) when llama-cpp-python or numpy is not installed.
"""
import argparse
import os
import struct
import sys

try:
    import numpy as np
    import llama_cpp
except ImportError as e:  # the environment is optional; the C++ test reports the skip
    print(f"llama_cpp_logits: {e} (install with scripts/llm-env.sh)", file=sys.stderr)
    sys.exit(77)

# Varied text: prose, code, numbers, whitespace runs, accents, CJK, emoji, chat markup.
PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time, in a small village at the edge of a great forest, there lived an old clockmaker who",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "The capital of France is",
    "1, 2, 3, 5, 8, 13, 21, 34, 55,",
    "In 1969, Apollo 11 landed on the Moon; the crew returned safely on July 24.",
    "   Indented   text\twith\t\ttabs and    runs of spaces.\n\n\nNew paragraph.",
    "Café, naïve, résumé, São Paulo, Zürich and Ångström are words with accents.",
    "東京は日本の首都です。北京是中国的首都。",
    "Emoji test: 🙂🚀🎉 — and some punctuation!? (yes...) [brackets] {braces}",
    "<|im_start|>user\nWhat is the boiling point of water?<|im_end|>\n<|im_start|>assistant\n",
    "SELECT name, COUNT(*) FROM users WHERE age > 30 GROUP BY name ORDER BY 2 DESC;",
    "Photosynthesis converts light energy into chemical energy. Plants use carbon dioxide and water to",
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer",
    "x = [i ** 2 for i in range(10) if i % 2 == 0]  # squares of even numbers",
    "The derivative of sin(x) is cos(x), and the integral of 1/x is ln|x| + C.",
]


def log_softmax(z):
    z = z.astype(np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def write_perplexity(args) -> int:
    n_ctx = args.n_ctx
    llm = llama_cpp.Llama(model_path=args.model, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                          n_threads=args.threads, verbose=False)
    add_bos = llm.metadata.get("tokenizer.ggml.add_bos_token", "true") == "true"
    bos = llm.token_bos() if add_bos else -1
    with open(args.perplexity, encoding="utf-8") as f:
        tokens = llm.tokenize(f.read().encode("utf-8"), add_bos=False, special=False)
    chunks = min(args.chunks, len(tokens) // n_ctx)
    first = n_ctx // 2
    logprobs = []
    for c in range(chunks):
        window = list(tokens[c * n_ctx:(c + 1) * n_ctx])
        if bos >= 0:
            window[0] = bos
        llm.reset()
        llm.eval(window)
        lp = log_softmax(np.asarray(llm.scores[:n_ctx]))
        for t in range(first, n_ctx - 1):
            logprobs.append(lp[t, window[t + 1]])
    nll = -np.asarray(logprobs, dtype=np.float64)
    ppl = float(np.exp(nll.mean()))
    var = float((nll * nll).mean() - nll.mean() ** 2)
    stderr = ppl * (var / (len(nll) - 1)) ** 0.5 if var > 0 else 0.0
    with open(args.out + f".{os.getpid()}.tmp", "wb") as f:
        f.write(b"QFPP")
        f.write(struct.pack("<IIIiI", 1, n_ctx, chunks, bos, len(tokens)))
        f.write(np.asarray(tokens, dtype="<i4").tobytes())
        f.write(np.asarray(logprobs, dtype="<f8").tobytes())
        f.write(struct.pack("<dd", ppl, stderr))
    os.replace(args.out + f".{os.getpid()}.tmp", args.out)  # tests running in parallel never read a partial file
    print(f"llama.cpp PPL = {ppl:.4f} +/- {stderr:.5f} ({len(nll)} tokens, {chunks} chunks of {n_ctx})")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ubatch", type=int, default=512,
                    help="positions llama.cpp computes at once (1: one token at a time, its generation path)")
    ap.add_argument("--perplexity", metavar="TEXT")
    ap.add_argument("--n-ctx", type=int, default=256)
    ap.add_argument("--chunks", type=int, default=4)
    args = ap.parse_args()
    if args.perplexity:
        return write_perplexity(args)
    llm = llama_cpp.Llama(model_path=args.model, n_ctx=512, n_batch=512, n_ubatch=args.ubatch, logits_all=True, n_threads=args.threads,
                          verbose=False)
    n_vocab = llm.n_vocab()
    with open(args.out + f".{os.getpid()}.tmp", "wb") as f:
        f.write(b"QFLG")
        f.write(struct.pack("<III", 1, len(PROMPTS), n_vocab))
        for text in PROMPTS:
            # parse_special: the chat markup becomes its special tokens, as in real use.
            tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
            llm.reset()
            llm.eval(tokens)
            logits = np.asarray(llm.scores[: len(tokens)], dtype=np.float32)
            assert logits.shape == (len(tokens), n_vocab)
            f.write(struct.pack("<I", len(tokens)))
            f.write(np.asarray(tokens, dtype="<i4").tobytes())
            f.write(logits.astype("<f4").tobytes())
    os.replace(args.out + f".{os.getpid()}.tmp", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
