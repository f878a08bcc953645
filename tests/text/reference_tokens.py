#!/usr/bin/env python3
"""Reference token ids for qforge's tokenizer checks (tests/text/reference_test.cpp).

Builds a deterministic corpus of varied text (licences, C and Python source, numbers, white-space
runs, accents, CJK, emoji, special-token strings; same seed, same text), then tokenizes every
document with
  * llama.cpp (llama-cpp-python, vocab_only) for each GGUF given with --gguf NAME=PATH, in the four
    modes add_bos x parse_special, and
  * Hugging Face tokenizers, with a tokenizer.json built from the first GGUF's vocabulary and merges
    for each pre-tokenizer (smollm, gpt-2, llama-bpe, qwen2), written to OUT/hf-NAME/tokenizer.json.
Each tool also times the whole corpus as one string (best of 3): llama.cpp's llama_tokenize called
directly, tokenizers' encode through its Python binding.
Writes OUT/corpus.json, OUT/llama-NAME.json and OUT/hf-NAME.json.
Exit code 77 when llama_cpp, tokenizers or gguf cannot be imported (the test then skips).
"""
import argparse
import json
import random
import sys
import sysconfig
import time
from pathlib import Path

try:
    import gguf
    import llama_cpp
    import tokenizers
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
except ImportError as e:
    print(f"reference_tokens: {e} (run scripts/llm-env.sh)", file=sys.stderr)
    sys.exit(77)

SEED = 20261204
LLAMA3_REGEX = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
                "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
QWEN2_REGEX = LLAMA3_REGEX.replace("\\p{N}{1,3}", "\\p{N}")


def read(path, limit=None):
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    return text[:limit] if limit else text


def generated_numbers(rng):
    parts = []
    for _ in range(600):
        kind = rng.randrange(6)
        if kind == 0:
            parts.append(str(rng.randrange(10 ** rng.randrange(1, 12))))
        elif kind == 1:
            parts.append(f"{rng.uniform(-1e6, 1e6):.{rng.randrange(0, 7)}f}")
        elif kind == 2:
            parts.append(f"{rng.randrange(1, 10 ** 9):,}")
        elif kind == 3:
            parts.append(f"{rng.random():.3e}")
        elif kind == 4:
            parts.append(hex(rng.randrange(1 << 32)))
        else:
            parts.append(f"{rng.randrange(1, 13)}/{rng.randrange(1, 29)}/{rng.randrange(1900, 2100)}")
    return " ".join(parts) + "\nFractions ½ ¾ ⅓, superscripts x² y³, Arabic-Indic ١٢٣٤, Devanagari ४५६, full-width １２３.\n"


def generated_whitespace(rng):
    pieces = ["word", "x", "if (a) {", "}", "return 0;", "é", "中文", "🙂", "'s", "-", "42"]
    spaces = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\n\n\n", "\r\n", " \n", "\t\n", "  \n  ", "\u3000",
              "\u00a0", "\u2003", "\u200b", " \r\n\r\n "]
    out = []
    for _ in range(1500):
        out.append(rng.choice(pieces))
        out.append(rng.choice(spaces))
    return "".join(out) + "trailing spaces   \ntrailing tab\t\n\n\n\nend   "


ACCENTED = """Café déjà vu: naïve façade, coöperate, Zoë and Chloë went to the crème brûlée fête.
Straße, Größe, Übermäßig schöne Äpfel; Ærøskøbing; Łódź, Kraków, Gdańsk; Dvořák, Janáček, Škoda.
El niño comió piñata; ¿Dónde está el baño? ¡Qué sorpresa! Ação, coração, São Paulo, Brasília.
Tiếng Việt có nhiều dấu: Hà Nội, Thành phố Hồ Chí Minh, người Việt Nam, chữ quốc ngữ.
İstanbul, ığdır, şişli; Ελληνικά: καλημέρα κόσμε, Αθήνα; Русский: Привет, как дела? Москва.
Combining marks: e\u0301 a\u0300 o\u0308 n\u0303 (decomposed), ﬁ ligature, Å vs A\u030a.
"""

CJK = """中文：我们今天去公园散步，天气非常好。机器学习模型的量化可以减少内存占用。
日本語：今日はいい天気ですね。東京タワーとスカイツリーに行きました。カタカナ、ひらがな、漢字。
한국어: 안녕하세요, 만나서 반갑습니다. 서울은 대한민국의 수도입니다.
混合 mixed 文本 text 123 数字４５６ 句子。標點符號「引號」『書名』（括弧）！？
"""

EMOJI = """Emoji: 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇫🇷🇯🇵 ❤️ ✨🎉 🏳️‍🌈 👩🏿‍💻 🧑‍🚀 1️⃣ #️⃣ ©️ ™️
Text with emoji inline: I love 🍕 and 🍣! The 🚀 launched at 9:30 🕤. Weather: ☀️🌧️⛈️.
"""

SPECIAL = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<repo_name>", "<file_sep>", "<filename>",
           "<gh_stars>", "<issue_start>", "<jupyter_code>", "<empty_output>"]


def generated_special(rng):
    out = []
    for i in range(300):
        role = rng.choice(["system", "user", "assistant"])
        out.append(f"{rng.choice(SPECIAL)}{role}\nMessage {i}: {rng.choice(['hi', 'What is 2+2?', 'Ça va?', '你好'])}"
                   f"{rng.choice(SPECIAL)}\n")
        out.append(rng.choice(["<|im_start", "im_end|>", "<|<|im_start|>|>", "<|im_start|><|im_end|>",
                               " <|endoftext|> ", "x<|endoftext|>y", "<|im_end|>\n\n"]))
    return "".join(out)


def generated_mixed(rng):
    pool = [chr(c) for c in range(0x20, 0x7F)] + list("éüßñøœ中文字日本한국🙂👍🏽\u3000\u00a0\t\n\r'") + \
           [chr(c) for c in (0x0301, 0x200D, 0xFE0F, 0x2028, 0x0660, 0x00BD, 0x10FFF, 0x1F600, 0xE000)]
    return "".join(rng.choice(pool) for _ in range(8000))


def corpus():
    rng = random.Random(SEED)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs = [
        ("Apache-2.0", read("/usr/share/common-licenses/Apache-2.0")),
        ("GPL-3", read("/usr/share/common-licenses/GPL-3", 24000)),
        ("MPL-2.0", read("/usr/share/common-licenses/MPL-2.0", 12000)),
        ("python textwrap.py", read(stdlib / "textwrap.py", 12000)),
        ("python json/decoder.py", read(stdlib / "json" / "decoder.py")),
        ("C stdlib.h", read("/usr/include/stdlib.h", 10000)),
        ("numbers", generated_numbers(rng)),
        ("whitespace runs", generated_whitespace(rng)),
        ("accents", ACCENTED * 6),
        ("CJK", CJK * 8),
        ("emoji", EMOJI * 8),
        ("special-token strings", generated_special(rng)),
        ("contractions", "I'm sure you'll see they've said it's HIS and I'M won't DON'T we'd she'S 'tis.\n" * 40),
        ("random mix", generated_mixed(rng)),
    ]
    return [{"name": n, "text": t} for n, t in docs]


def best_of(n, fn):
    best = float("inf")
    for _ in range(n):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def llama_reference(path, docs, whole):
    vocab = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    modes = {}
    for add_bos in (False, True):
        for special in (False, True):
            modes[f"bos={int(add_bos)} special={int(special)}"] = [
                vocab.tokenize(d["text"].encode("utf-8"), add_bos=add_bos, special=special) for d in docs]
    data = whole.encode("utf-8")
    # llama_tokenize itself, with room for every token: Llama.tokenize's first call gets a buffer of
    # the training context and, on a longer text, tokenizes it all twice.
    buffer = (llama_cpp.llama_token * (len(data) + 8))()
    call = lambda: llama_cpp.llama_tokenize(vocab._model.vocab, data, len(data), buffer, len(buffer), False, False)
    whole_tokens = call()
    assert whole_tokens == len(vocab.tokenize(data, add_bos=False, special=False)), "llama_tokenize disagrees"
    return {"modes": modes, "seconds": best_of(3, call), "whole_tokens": whole_tokens}


def hf_tokenizer(reader, pre):
    field = lambda key: reader.fields[key]
    strings = lambda key: [bytes(field(key).parts[i]).decode("utf-8") for i in field(key).data]
    tokens = strings("tokenizer.ggml.tokens")
    types = [int(field("tokenizer.ggml.token_type").parts[i][0]) for i in field("tokenizer.ggml.token_type").data]
    merges = [tuple(m.split(" ", 1)) for m in strings("tokenizer.ggml.merges")]
    vocab = {t: i for i, t in enumerate(tokens)}  # special tokens too, as in real tokenizer.json files
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=(pre == "llama-bpe")))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.pre_tokenizer = {
        "smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                           pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]),
        "gpt-2": pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        "llama-bpe": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_REGEX), "isolated"), byte_level]),
        "qwen2": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_REGEX), "isolated"), byte_level]),
    }[pre]
    tok.decoder = decoders.ByteLevel()
    added = [AddedToken(tokens[i], special=(types[i] == 3), normalized=False) for i in range(len(tokens))
             if types[i] in (3, 4)]
    tok.add_tokens(added)
    for i, t in enumerate(tokens):
        if types[i] in (3, 4) and tok.token_to_id(t) != i:
            raise SystemExit(f"reference_tokens: added token '{t}' got id {tok.token_to_id(t)}, not {i}")
    return tok


def hf_reference(tok, docs, whole):
    ids = [tok.encode(d["text"], add_special_tokens=False).ids for d in docs]
    seconds = best_of(3, lambda: tok.encode(whole, add_special_tokens=False))
    return {"modes": {"bos=0 special=1": ids}, "seconds": seconds}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--gguf", action="append", default=[], help="NAME=PATH, tokenized by llama.cpp")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    docs = corpus()
    whole = "".join(d["text"] for d in docs)
    (out / "corpus.json").write_text(json.dumps({"docs": docs, "whole": whole}), encoding="utf-8")
    ggufs = [g.split("=", 1) for g in args.gguf]
    for name, path in ggufs:
        (out / f"llama-{name}.json").write_text(json.dumps(llama_reference(path, docs, whole)))
    if ggufs:
        reader = gguf.GGUFReader(ggufs[0][1])
        for pre in ("smollm", "gpt-2", "llama-bpe", "qwen2"):
            tok = hf_tokenizer(reader, pre)
            (out / f"hf-{pre}").mkdir(exist_ok=True)
            tok.save(str(out / f"hf-{pre}" / "tokenizer.json"))
            (out / f"hf-{pre}.json").write_text(json.dumps(hf_reference(tok, docs, whole)))
    print(f"reference_tokens: {len(docs)} documents, {len(whole.encode('utf-8'))} bytes; llama-cpp-python "
          f"{llama_cpp.__version__}, tokenizers {tokenizers.__version__}")


main()
