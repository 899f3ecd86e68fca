"""A tiny randomly initialised BERT with a WordPiece vocabulary learnt from given text.

The demo cannot download bert-base-uncased, so it builds a stand-in with the same
interfaces (BertTokenizerFast + BertModel, loadable with AutoTokenizer/AutoModel) that
is small enough to pre-train and evaluate on a 2-core CPU.

The vocabulary is learnt here rather than by `tokenizers.trainers.WordPieceTrainer`:
that trainer breaks ties between equally frequent pairs in hash-map order, so two runs
on the same text give different token ids, and the demo must be byte-for-byte
reproducible. The algorithm is the same (BPE merges over "##"-prefixed continuation
pieces, as the tokenizers trainer does for WordPiece), with ties broken by the pieces'
text; normalisation, pre-tokenisation and tokenisation are the `tokenizers` library's
own BERT components, so the result tokenises exactly like a BERT tokenizer.
"""

from __future__ import annotations

import heapq
import os
import string
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

from ..errors import InputError
from ..io import atomic_dir

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # [PAD] = 0, as in BERT
MAX_CHARS_PER_WORD = 100  # BERT's limit: longer words become [UNK]
PREFIX = "##"


def _bert_pipeline(lowercase: bool):
    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    return normalizer, pre_tokenizers.BertPreTokenizer()


def count_words(texts: Iterable[str], lowercase: bool = True) -> Counter[str]:
    """Words as BERT's normaliser and pre-tokeniser split them, with their counts."""
    normalizer, pre_tokenizer = _bert_pipeline(lowercase)
    counts: Counter[str] = Counter()
    for text in texts:
        if not isinstance(text, str):
            raise InputError(f"tiny BERT: texts must be strings, got {type(text).__name__}")
        counts.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    return counts


def learn_wordpiece_vocab(
    word_counts: dict[str, int],
    vocab_size: int,
    min_frequency: int = 2,
    initial_alphabet: Iterable[str] = (),
) -> list[str]:
    """Specials, every character (word-initial and "##" form), then merged pieces in
    merge order until `vocab_size`; deterministic for the same counts."""
    words = sorted(w for w in word_counts if 0 < len(w) <= MAX_CHARS_PER_WORD)
    symbols = [[w[0], *(PREFIX + c for c in w[1:])] for w in words]
    freq = [word_counts[w] for w in words]
    alphabet = {s for syms in symbols for s in syms}
    for c in initial_alphabet:
        alphabet.update((c, PREFIX + c))
    vocab = list(SPECIAL_TOKENS) + sorted(alphabet - set(SPECIAL_TOKENS))
    known = set(vocab)

    pair_counts: dict[tuple[str, str], int] = defaultdict(int)
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for i, syms in enumerate(symbols):
        for pair in zip(syms, syms[1:], strict=False):
            pair_counts[pair] += freq[i]
            where[pair].add(i)
    heap = [(-c, a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)

    while len(vocab) < vocab_size and heap:
        neg, a, b = heapq.heappop(heap)
        if pair_counts.get((a, b), 0) != -neg:
            continue  # stale entry: the count changed after it was pushed
        if -neg < min_frequency:
            break
        new = a + b[len(PREFIX) :]
        if new not in known:
            known.add(new)
            vocab.append(new)
        changed: set[tuple[str, str]] = set()
        for i in where.pop((a, b), ()):
            syms = symbols[i]
            merged, j = [], 0
            while j < len(syms):
                if j + 1 < len(syms) and syms[j] == a and syms[j + 1] == b:
                    merged.append(new)
                    j += 2
                else:
                    merged.append(syms[j])
                    j += 1
            if len(merged) == len(syms):
                continue  # this word lost the pair to an earlier merge
            for pair in zip(syms, syms[1:], strict=False):
                pair_counts[pair] -= freq[i]
                changed.add(pair)
            for pair in zip(merged, merged[1:], strict=False):
                pair_counts[pair] += freq[i]
                where[pair].add(i)
                changed.add(pair)
            symbols[i] = merged
        for pair in changed:
            count = pair_counts.get(pair, 0)
            if count > 0:
                heapq.heappush(heap, (-count, *pair))
            else:
                pair_counts.pop(pair, None)
    return vocab


def build_tokenizer(vocab: list[str], lowercase: bool = True, model_max_length: int = 512):
    """A BertTokenizerFast over `vocab`: BERT normaliser and pre-tokeniser, WordPiece,
    and the [CLS] ... [SEP] post-processor."""
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import BertTokenizerFast

    ids = {tok: i for i, tok in enumerate(vocab)}
    tok = Tokenizer(
        models.WordPiece(
            ids,
            unk_token="[UNK]",
            continuing_subword_prefix=PREFIX,
            max_input_chars_per_word=MAX_CHARS_PER_WORD,
        )
    )
    tok.normalizer, tok.pre_tokenizer = _bert_pipeline(lowercase)
    tok.decoder = decoders.WordPiece(prefix=PREFIX)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    return BertTokenizerFast(
        tokenizer_object=tok,
        do_lower_case=lowercase,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
    )


def build_tiny_bert(
    texts: Iterable[str],
    out_dir: str | Path,
    vocab_size: int = 4000,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 512,
    seed: int = 0,
    lowercase: bool = True,
) -> Path:
    """Learn a vocabulary from `texts`, initialise a BertModel from `seed`, and save
    both to `out_dir` (which appears complete or not at all)."""
    import torch
    from transformers import BertConfig, BertModel

    sizes = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
    }
    for key, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"tiny BERT: {key} must be a positive integer, got {value!r}")
    if hidden_size % num_heads:
        raise InputError(f"tiny BERT: hidden_size {hidden_size} not divisible by {num_heads} heads")

    counts = count_words(texts, lowercase)
    if not counts:
        raise InputError("tiny BERT: no text to learn a vocabulary from")
    chars = string.ascii_lowercase + string.digits + string.punctuation
    if not lowercase:
        chars += string.ascii_uppercase
    vocab = learn_wordpiece_vocab(counts, vocab_size, initial_alphabet=chars)
    tokenizer = build_tokenizer(vocab, lowercase, max_position_embeddings)

    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=vocab.index("[PAD]"),
    )
    with torch.random.fork_rng(devices=[]):  # seed locally, leave the caller's RNG alone
        torch.manual_seed(seed)
        model = BertModel(config, add_pooling_layer=False)
    model.eval()

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # vocab.txt too, for tools that read a BERT vocabulary directly
        (tmp / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
        os.chmod(tmp, 0o755)
    return out_dir
