"""An atom-level SMILES tokenizer, saved in Hugging Face's format.

Byte-pair tokenizers trained on SMILES can split `[nH]` into `[`, `nH`, `]`, glue a ring-bond
digit to the atom before it, or read `Cl` as `C` + `l`. Here each bracket atom is one token, `Br`
and `Cl` are single tokens, `%12` is one ring-bond token, and every other character is its own
token; text the pattern does not cover becomes `<unk>`, never a silent merge.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

SMILES_PATTERN = (
    r"(\[[^\[\]]+\]|Br|Cl|%\d{2}|[BCNOSPFI]|[bcnops]|\(|\)|\.|=|#|-|\+|\\|/|:|~|@|\?|>|\*|\$|\d)"
)
_REGEX = re.compile(SMILES_PATTERN)
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's ids 0..4


def tokenize(smiles: str) -> list[str]:
    """Split a SMILES into atom-level tokens; characters outside the grammar become '<unk>'.

    >>> tokenize("C[C@@H](Cl)c1cc[nH]c1Br.%12")
    ['C', '[C@@H]', '(', 'Cl', ')', 'c', '1', 'c', 'c', '[nH]', 'c', '1', 'Br', '.', '%12']
    """
    tokens: list[str] = []
    position = 0
    for match in _REGEX.finditer(smiles):
        if match.start() > position:
            tokens.append("<unk>")
        tokens.append(match.group(0))
        position = match.end()
    if position < len(smiles):
        tokens.append("<unk>")
    return tokens


def build_vocab(corpus: Iterable[str], min_count: int = 1, max_size: int = 2000) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for smiles in corpus:
        counts.update(t for t in tokenize(smiles) if t != "<unk>")
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for token, count in counts.most_common(max_size - len(vocab)):
        if count >= min_count:
            vocab[token] = len(vocab)
    return vocab


def make_tokenizer(vocab: dict[str, int], model_max_length: int = 256):
    """A transformers PreTrainedTokenizerFast that applies SMILES_PATTERN, with RoBERTa specials."""
    from tokenizers import Regex, Tokenizer, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(SMILES_PATTERN), behavior="isolated")
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        mask_token="<mask>", cls_token="<s>", sep_token="</s>",
        model_max_length=model_max_length,
    )


def train_tokenizer(corpus: Iterable[str], model_max_length: int = 256):
    return make_tokenizer(build_vocab(corpus), model_max_length)
